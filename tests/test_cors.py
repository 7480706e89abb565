"""CORS as analytics.js needs it: preflights, headers on every answer (errors too), per-source origins."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml
from helpers import ADMIN, OTHER_KEY, WRITE_KEY, basic, bearer, config_doc, make_client, stored
from starlette.testclient import TestClient

PAGE = "http://127.0.0.1:45639"
SHOP = "https://shop.example.com"


@pytest.fixture
def cors_client(tmp_path: Path, db_url: str) -> Iterator[TestClient]:
    """WK_TEST allows any origin (the default); WK_OTHER only the shop and its subdomains."""
    doc = config_doc()
    doc["workspaces"][1]["sources"][0]["allowedOrigins"] = [SHOP, "https://*.shop.example.com"]
    path = tmp_path / "cors.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with make_client(path, db_url) as client:
        yield client


def preflight(client: TestClient, path: str, origin: str, headers: str = "authorization") -> dict[str, str]:
    answer = client.options(
        path,
        headers={"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": headers},
    )
    assert answer.status_code == 204, answer.text
    return dict(answer.headers)


def test_preflight_allows_what_analytics_next_sends(cors_client: TestClient) -> None:
    for path in ("/v1/p", "/v1/t", "/v1/b", "/v1/batch"):
        headers = preflight(cors_client, path, PAGE, "authorization,x-retry-count")
        assert headers["access-control-allow-origin"] == "*"
        assert "POST" in headers["access-control-allow-methods"]
        allowed = {h.strip() for h in headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "x-retry-count"} <= allowed
        assert int(headers["access-control-max-age"]) >= 600  # or Chromium re-preflights every 5 s
        assert "access-control-allow-credentials" not in headers


def test_success_and_errors_all_carry_cors_headers(cors_client: TestClient) -> None:
    origin = {"Origin": PAGE}
    body = orjson.dumps({"type": "track", "event": "Clicked", "anonymousId": "a1", "messageId": "cors-1"})
    answers = [
        cors_client.post("/v1/t", content=body, headers={**origin, **basic(WRITE_KEY), "Content-Type": "text/plain"}),
        cors_client.post("/v1/t", content=b"{not json", headers={**origin, **basic(WRITE_KEY)}),  # 400
        cors_client.post("/v1/t", content=body, headers={**origin, **basic("WK_NOPE")}),  # 401
        cors_client.post("/v1/t", content=b"x" * 600_000, headers={**origin, **basic(WRITE_KEY)}),  # 413
        cors_client.post("/v1/nowhere", content=body, headers=origin),  # 404
    ]
    assert [a.status_code for a in answers] == [200, 400, 401, 413, 404]
    for answer in answers:
        assert answer.headers["access-control-allow-origin"] == "*"
        exposed = {h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")}
        assert "retry-after" in exposed
        assert "access-control-allow-credentials" not in answer.headers
    assert [e["messageId"] for e in stored(cors_client)] == ["cors-1"]


def test_requests_without_origin_get_no_cors_headers(cors_client: TestClient) -> None:
    answer = cors_client.get("/health")
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers


def test_source_with_listed_origins_echoes_an_allowed_origin(cors_client: TestClient) -> None:
    body = orjson.dumps({"type": "track", "event": "Bought", "anonymousId": "a2", "messageId": "cors-shop"})
    for origin in (SHOP, "https://eu.shop.example.com"):
        answer = cors_client.post("/v1/t", content=body, headers={"Origin": origin, **basic(OTHER_KEY)})
        assert answer.status_code == 200, answer.text
        assert answer.headers["access-control-allow-origin"] == origin
        assert "Origin" in answer.headers["vary"]


def test_source_refuses_other_origins_before_storing(cors_client: TestClient) -> None:
    body = orjson.dumps({"type": "track", "event": "Bought", "anonymousId": "a3", "messageId": "cors-evil"})
    for headers in ({**basic(OTHER_KEY)}, {}):
        params = {} if headers else {"writeKey": OTHER_KEY}
        answer = cors_client.post(
            "/v1/t", content=body, params=params, headers={"Origin": "https://evil.example", **headers}
        )
        assert answer.status_code == 403
        error = answer.json()
        assert error["code"] == "origin_not_allowed" and "https://evil.example" in error["moreInfo"]
        # Readable by the page, so analytics.js drops the event instead of retrying a "network error".
        assert answer.headers["access-control-allow-origin"] == "https://evil.example"
    # A look-alike suffix is not a subdomain.
    answer = cors_client.post(
        "/v1/t", content=body, headers={"Origin": "https://notshop.example.com", **basic(OTHER_KEY)}
    )
    assert answer.status_code == 403
    events = cors_client.get("/v1/events", params={"messageId": "cors-evil"}, headers=bearer(ADMIN)).json()["data"]
    assert events == []


def test_preflight_refused_when_no_source_allows_the_origin(tmp_path: Path, db_url: str) -> None:
    doc = config_doc()
    for workspace in doc["workspaces"]:
        for source in workspace["sources"]:
            source["allowedOrigins"] = [SHOP]
    path = tmp_path / "strict.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with make_client(path, db_url) as client:
        headers = preflight(client, "/v1/t", SHOP)
        assert headers["access-control-allow-origin"] == SHOP
        refused = client.options(
            "/v1/t", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert refused.status_code == 403
        assert refused.json()["code"] == "origin_not_allowed"
        assert "access-control-allow-origin" not in refused.headers


def test_unhandled_errors_still_carry_cors_headers(cors_client: TestClient) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    runtime = cors_client.app.state.runtime  # type: ignore[attr-defined]
    runtime.storage.write = broken
    body = orjson.dumps({"type": "track", "event": "X", "anonymousId": "a4"})
    answer = cors_client.post("/v1/t", content=body, headers={"Origin": PAGE, **basic(WRITE_KEY)})
    assert answer.status_code == 500
    assert answer.json()["code"] == "internal_error"
    assert answer.headers["access-control-allow-origin"] == "*"
