"""The edge against a hostile client (issue 16's findings, in process; tests/test_hostile.py runs
the data-driven suite against a real server): one write-key resolver for CORS and auth, browser
and server keys, no Host reflection, whole-match ids, UTF-8 headers, capped echoes, strict
profile bodies, and a debugger that survives any message."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml
from helpers import OTHER_KEY, TOKEN, WRITE_KEY, basic, bearer, config_doc, make_client, stored
from starlette.testclient import TestClient

SHOP = "https://shop.example.com"
EVIL = "https://evil.example.net"
BROWSER_KEY = "WK_SHOP_WEB"
SERVER_KEY = "WK_SHOP_API"


def edge_config(tmp_path: Path, kinds: bool = False, **overrides: object) -> Path:
    """WK_TEST: any origin; WK_OTHER: the shop only; with `kinds`, the shop also has a browser
    and a server key (a config the previous main refused, so the other tests run on it too)."""
    doc = config_doc(**overrides)
    shop = doc["workspaces"][1]["sources"][0]
    shop["allowedOrigins"] = [SHOP]
    if kinds:
        shop["writeKeys"] += [{"key": BROWSER_KEY, "kind": "browser"}, {"key": SERVER_KEY, "kind": "server"}]
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@pytest.fixture
def edge(tmp_path: Path, db_url: str) -> Iterator[TestClient]:
    with make_client(edge_config(tmp_path), db_url) as client:
        yield client


@pytest.fixture
def kinds(tmp_path: Path, db_url: str) -> Iterator[TestClient]:
    with make_client(edge_config(tmp_path, kinds=True), db_url) as client:
        yield client


def event(message_id: str, **extra: object) -> bytes:
    return orjson.dumps({"type": "track", "event": "Viewed", "userId": "u1", "messageId": message_id, **extra})


def test_a_body_key_cannot_borrow_an_open_sources_query_key_past_allowed_origins(edge: TestClient) -> None:
    """Old main: CORS looked at ?writeKey= (an open source), auth at the body (the shop): 200."""
    answer = edge.post(
        f"/v1/t?writeKey={WRITE_KEY}",
        content=event("bypass", writeKey=OTHER_KEY),
        headers={"Origin": EVIL, "Content-Type": "text/plain"},
    )
    assert answer.status_code == 403, answer.text
    assert answer.json()["code"] == "origin_not_allowed"
    assert answer.headers["access-control-allow-origin"]  # readable by the page: the SDK drops it, no retry
    assert stored(edge, sourceId="src_other") == []
    assert stored(edge) == []


def test_a_body_key_from_an_allowed_origin_is_stored(edge: TestClient) -> None:
    answer = edge.post("/v1/t", content=event("allowed", writeKey=OTHER_KEY), headers={"Origin": SHOP})
    assert answer.status_code == 200, answer.text
    assert [e["messageId"] for e in stored(edge)] == ["allowed"]


def test_a_server_key_is_refused_from_any_web_page_and_works_from_a_server(kinds: TestClient) -> None:
    for origin in (SHOP, EVIL):
        answer = kinds.post("/v1/t", content=event(f"srv-{origin}"), headers={"Origin": origin, **basic(SERVER_KEY)})
        assert answer.status_code == 403, answer.text
        assert answer.json()["code"] == "server_key_in_browser"
    assert kinds.get(f"/v1/projects/{SERVER_KEY}/settings", headers={"Origin": SHOP}).status_code == 403
    answer = kinds.post("/v1/t", content=event("from-a-server"), headers=basic(SERVER_KEY))
    assert answer.status_code == 200, answer.text
    assert [e["messageId"] for e in stored(kinds)] == ["from-a-server"]


def test_a_browser_key_is_taken_from_its_origins_and_from_pixels_but_not_from_others(kinds: TestClient) -> None:
    assert kinds.post("/v1/t", content=event("b1"), headers={"Origin": SHOP, **basic(BROWSER_KEY)}).status_code == 200
    refused = kinds.post("/v1/t", content=event("b2"), headers={"Origin": EVIL, **basic(BROWSER_KEY)})
    assert refused.status_code == 403
    data = base64.b64encode(event("b3")).decode()
    assert kinds.get("/v1/pixel/track", params={"writeKey": BROWSER_KEY, "data": data}).status_code == 200
    assert sorted(e["messageId"] for e in stored(kinds)) == ["b1", "b3"]


def test_a_key_kind_must_be_browser_or_server(tmp_path: Path, db_url: str) -> None:
    from collector.errors import ConfigError
    from collector.settings import load

    doc = config_doc()
    doc["workspaces"][0]["sources"][0]["writeKeys"] = [{"key": "WK_X", "kind": "public"}]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(ConfigError, match="kind"):
        load(path, environ={"COLLECTOR_STORAGE": db_url})


def test_the_settings_endpoint_never_echoes_a_hostile_host(edge: TestClient) -> None:
    hostile = edge.get(f"/v1/projects/{WRITE_KEY}/settings", headers={"Host": "evil.example.net/x?"})
    assert hostile.status_code == 400
    assert hostile.json()["code"] == "host_not_allowed"
    assert "evil" not in hostile.text
    fine = edge.get(f"/v1/projects/{WRITE_KEY}/settings", headers={"Host": "collector.example.com:8443"})
    assert fine.status_code == 200
    assert fine.json()["integrations"]["Segment.io"]["apiHost"] == "collector.example.com:8443/v1"
    assert fine.headers["vary"] == "Host"


def test_with_allowed_hosts_other_hosts_get_400_and_public_url_wins(tmp_path: Path, db_url: str) -> None:
    path = edge_config(tmp_path, allowedHosts=["collector.example.com"])
    with make_client(path, db_url) as client:
        url = f"/v1/projects/{WRITE_KEY}/settings"
        assert client.get(url, headers={"Host": "collector.example.com"}).status_code == 200
        assert client.get(url, headers={"Host": "attacker.example.net"}).status_code == 400
    with make_client(path, db_url, COLLECTOR_PUBLIC_URL="https://t.example.org") as client:
        answer = client.get(f"/v1/projects/{WRITE_KEY}/settings", headers={"Host": "attacker.example.net"})
        assert answer.json()["integrations"]["Segment.io"]["apiHost"] == "t.example.org/v1"


def test_a_trailing_slash_is_not_redirected_to_the_hosts_location(edge: TestClient) -> None:
    answer = edge.get("/health/", headers={"Host": "evil.example.net"}, follow_redirects=False)
    assert answer.status_code != 307 and "location" not in answer.headers


def test_an_id_with_a_trailing_newline_is_a_400_not_a_404(edge: TestClient) -> None:
    answer = edge.get("/identify/usr_ABCDEFGHIJKLMNOP%0A", headers=bearer(TOKEN))
    assert answer.status_code == 400, answer.text


def test_a_utf8_user_agent_is_stored_as_sent(edge: TestClient) -> None:
    agent = "Mozilla/5.0 (Café; Ωmega) 日本"
    answer = edge.post("/v1/t", content=event("ua"), headers={**basic(WRITE_KEY), "User-Agent": agent.encode()})  # type: ignore[dict-item]
    assert answer.status_code == 200
    assert stored(edge)[0]["context"]["userAgent"] == agent


def test_an_error_body_does_not_echo_a_huge_value_whole(edge: TestClient) -> None:
    huge = "x" * 10_000
    answer = edge.post("/v1/t", content=orjson.dumps({"type": huge, "userId": "u"}), headers=basic(WRITE_KEY))
    assert answer.status_code == 400
    assert len(answer.content) < 3_000, len(answer.content)
    assert "cut" in answer.text


def test_profile_bodies_refuse_keys_outside_traits(edge: TestClient) -> None:
    created = edge.post("/identify", json={"traits": {"age": 3}}, headers=bearer(TOKEN))
    assert created.status_code == 200, created.text
    user_id = created.json()["id"]
    for body in ({"age": None}, {"trait": {"age": 4}}):
        answer = edge.post(f"/track/{user_id}", json=body, headers=bearer(TOKEN))
        assert answer.status_code == 400, answer.text
        assert answer.json()["code"] == "unknown_field"
        assert answer.json()["errors"][0]["pointer"] == "/" + next(iter(body))
    after = edge.get(f"/identify/{user_id}", headers=bearer(TOKEN)).json()
    assert after["traits"] == {"age": 3} and after["updatedAt"] == created.json()["updatedAt"]
