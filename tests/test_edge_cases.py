"""Edge cases found in review: each test pins a behaviour that was once wrong."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from helpers import ADMIN, QUARANTINE_KEY, TOKEN, WRITE_KEY, basic, bearer, config_doc, make_client, stored
from starlette.testclient import TestClient

from collector.app import create_app
from collector.errors import ConfigError, StorageUnavailable
from collector.settings import load
from collector.storage.base import StoredEvent
from collector.storage.sqlite import SQLiteStorage

ROOT = Path(__file__).resolve().parent.parent


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"a": value}
    return value


def post(client: TestClient, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    content = json.dumps(body).encode()  # the stdlib encodes deeper than orjson (255 levels)
    return client.post(path, content=content, headers=headers or basic(WRITE_KEY))


def test_an_event_too_deep_to_store_is_invalid_not_a_500_and_the_batch_is_kept(client: TestClient) -> None:
    deep = {"type": "track", "event": "Deep", "userId": "u", "messageId": "deep", "properties": nested(300)}
    batch = {"batch": [{"type": "track", "event": "Ok", "userId": "u", "messageId": "ok"}, deep]}
    answer = post(client, "/v1/batch", batch)
    assert answer.status_code == 400
    assert answer.json()["errors"] == [
        {
            "index": 1,
            "messageId": "deep",
            "pointer": "",
            "keyword": "maxDepth",
            "message": "JSON nested deeper than 255 levels",
        }
    ]
    assert [e["messageId"] for e in stored(client)] == ["ok"]
    assert post(client, "/v1/batch", batch, basic(QUARANTINE_KEY)).status_code == 200  # quarantine keeps it
    assert client.get("/v1/quarantine", headers=bearer(ADMIN)).json()["data"][0]["messageId"] == "deep"
    deep_traits = json.dumps({"traits": nested(300)}).encode()
    profile = client.post(
        "/identify", content=deep_traits, headers=bearer(TOKEN) | {"Content-Type": "application/json"}
    )
    assert profile.status_code == 400


def test_a_resent_identify_does_not_overwrite_newer_profile_traits(client: TestClient) -> None:
    user = client.post("/identify", json={"traits": {}}, headers=bearer(TOKEN)).json()
    identify = {"userId": user["id"], "traits": {"plan": "free"}, "messageId": "id-1"}
    assert post(client, "/v1/identify", identify).status_code == 200
    client.post(f"/track/{user['id']}", json={"traits": {"plan": "pro"}}, headers=bearer(TOKEN))
    assert post(client, "/v1/identify", identify).status_code == 200  # the SDK's retry
    assert client.get(f"/identify/{user['id']}", headers=bearer(TOKEN)).json()["traits"] == {"plan": "pro"}


def test_a_resent_invalid_message_is_quarantined_once(client: TestClient) -> None:
    for _ in range(3):
        assert post(client, "/v1/track", {"userId": "u", "messageId": "q-1"}, basic(QUARANTINE_KEY)).status_code == 200
    assert len(client.get("/v1/quarantine", headers=bearer(ADMIN)).json()["data"]) == 1


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/events", {"cursor": base64.urlsafe_b64encode(b'{"after": 18446744073709551615}').decode()}),
        ("/v1/events", {"since": "0001-01-01T00:00:00+01:00"}),
    ],
)
def test_read_back_parameters_out_of_range_are_400(client: TestClient, path: str, params: dict[str, str]) -> None:
    assert client.get(path, params=params, headers=bearer(ADMIN)).status_code == 400


@pytest.mark.parametrize("limit", ["²", "١٠"])  # isdigit() but not ASCII digits
def test_non_ascii_digits_are_not_a_limit(client: TestClient, limit: str) -> None:
    assert client.get("/identify", params={"limit": limit}, headers=bearer(TOKEN)).status_code == 400


def test_huge_page_token_position_is_400(client: TestClient) -> None:
    import hashlib

    fingerprint = hashlib.sha256(orjson.dumps([])).hexdigest()[:16]
    token = base64.urlsafe_b64encode(orjson.dumps({"after": 2**64 - 1, "q": fingerprint})).decode().rstrip("=")
    assert client.get("/identify", params={"pageToken": token}, headers=bearer(TOKEN)).status_code == 400


@pytest.mark.parametrize(
    ("body", "headers"),
    [(b"x" * 600_000, {}), (b"{}", {"Content-Encoding": "br"}), (b"not json", {})],
    ids=["oversized", "unknown-encoding", "not-json"],
)
def test_telemetry_is_always_200(client: TestClient, body: bytes, headers: dict[str, str]) -> None:
    assert client.post("/v1/m", content=body, headers=headers).status_code == 200


def test_search_matches_exactly(client: TestClient) -> None:
    identifiers = {"email": "a@b", "name": {"last": "Doe"}, "n": 7, "vip": True, "gone": None}
    user = client.post("/identify", json={"identifiers": identifiers}, headers=bearer(TOKEN)).json()
    assert "gone" not in user["identifiers"]  # null means absent, on create as on update

    def hits(**query: str) -> int:
        return len(client.get("/identify", params=query, headers=bearer(TOKEN)).json()["data"])

    assert hits(email="a@b") == 1 and hits(n="7") == 1 and hits(vip="true") == 1
    assert hits(email='"a@b"') == 0 and hits(name='{"last":"Doe"}') == 0 and hits(n="null") == 0
    assert hits(vip="1") == 0 and hits(n='"7"') == 0


def test_float_integer_ids_are_stored_as_integer_strings(client: TestClient) -> None:
    assert post(client, "/v1/track", {"event": "E", "userId": 1.0, "messageId": "f1"}).status_code == 200
    assert stored(client, messageId="f1")[0]["userId"] == "1"


def test_multi_member_gzip_bodies_are_read_whole(client: TestClient) -> None:
    body = orjson.dumps({"batch": [{"type": "track", "event": "E", "userId": "u", "messageId": "gz"}]})
    half = len(body) // 2
    compressed = gzip.compress(body[:half]) + gzip.compress(body[half:])
    answer = client.post("/v1/batch", content=compressed, headers=basic(WRITE_KEY) | {"Content-Encoding": "gzip"})
    assert answer.status_code == 200 and stored(client, messageId="gz")


# --- client IPs -------------------------------------------------------------------------------


def ip_for(tmp_path: Path, config: Path, peer: str, headers: list[tuple[str, str]]) -> str:
    settings = load(
        config,
        environ={
            "COLLECTOR_STORAGE": f"sqlite:///{tmp_path / 'ip.db'}",
            "COLLECTOR_TRUSTED_PROXIES": "203.0.113.0/24,10.0.0.0/8",
        },
    )
    with TestClient(create_app(settings), client=(peer, 1234)) as test_client:
        raw = [(b"authorization", basic(WRITE_KEY)["Authorization"].encode())]
        raw += [(name.encode(), value.encode()) for name, value in headers]
        answer = test_client.post("/v1/track", content=b'{"event":"E","userId":"u"}', headers=raw)  # type: ignore[arg-type]
        assert answer.status_code == 200
        event = stored(test_client)[-1]
    return str(event["context"]["ip"])


def test_a_forged_first_x_forwarded_for_line_is_not_believed(tmp_path: Path, config_path: Path) -> None:
    headers = [("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.9")]
    assert ip_for(tmp_path, config_path, "203.0.113.7", headers) == "198.51.100.9"


def test_ipv4_mapped_proxies_and_hops_with_ports(tmp_path: Path, config_path: Path) -> None:
    assert ip_for(tmp_path, config_path, "::ffff:10.1.2.3", [("x-forwarded-for", "198.51.100.7")]) == "198.51.100.7"
    assert ip_for(tmp_path, config_path, "203.0.113.7", [("x-forwarded-for", "198.51.100.9:51234")]) == "198.51.100.9"
    assert ip_for(tmp_path, config_path, "203.0.113.7", [("x-forwarded-for", "[2001:db8::1]:443")]) == "2001:db8::1"


# --- configuration -------------------------------------------------------------------------------


def test_env_admin_tokens_replace_the_files(tmp_path: Path, config_path: Path) -> None:
    settings = load(config_path, environ={"COLLECTOR_ADMIN_TOKENS": "adm_rotated"})
    assert settings.is_admin_token("adm_rotated") and not settings.is_admin_token(ADMIN)


def test_source_ids_are_unique_across_workspaces(tmp_path: Path) -> None:
    doc = config_doc()
    doc["workspaces"][1]["sources"][0]["id"] = "src_web"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="'src_web' is used by another source"):
        load(path, environ={})
    for workspace in doc["workspaces"]:
        for source in workspace["sources"]:
            source.pop("id")
    path.write_text(yaml.safe_dump(doc))
    ids = {source.id for source in load(path, environ={}).write_keys.values()}
    assert len(ids) == 4  # defaults differ across workspaces


# --- SQLite lock contention ------------------------------------------------------------------------


def test_a_held_lock_fails_a_whole_group_within_one_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"

    async def scenario() -> tuple[list[BaseException | Any], float]:
        storage = SQLiteStorage(f"sqlite:///{path}", busy_timeout_ms=500)
        await storage.open()
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            began = time.monotonic()
            writes = [
                storage.write([StoredEvent("ws", "s", f"m{i}", "track", "E", "u", None, "t", "t", b"{}")])
                for i in range(20)
            ]
            results = await asyncio.gather(*writes, return_exceptions=True)
            return results, time.monotonic() - began
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
            await storage.close()

    results, elapsed = asyncio.run(scenario())
    assert all(isinstance(r, StorageUnavailable) for r in results)
    assert elapsed < 5, f"20 writes took {elapsed:.1f} s: the timeout was paid per write, not per group"


# --- tracking plans under edits ----------------------------------------------------------------------


@pytest.fixture
def plan_client(tmp_path: Path) -> Any:
    plans = tmp_path / "plans"
    plans.mkdir()
    shutil.copy(ROOT / "spec" / "plans" / "shop.yaml", plans / "shop.yaml")
    doc = config_doc()
    doc["workspaces"][0]["sources"].append(
        {"id": "src_plan", "writeKeys": ["WK_PLAN"], "trackingPlan": "shop", "planEnforcement": "reject"}
    )
    config = tmp_path / "plan.yaml"
    config.write_text(yaml.safe_dump(doc))
    env = {"COLLECTOR_PLANS_DIR": str(plans)}
    with make_client(config, f"sqlite:///{tmp_path / 'p.db'}", **env) as test_client:
        yield test_client, plans


BAD_ORDER = {"event": "Order Completed", "userId": "u", "properties": {"order_id": 7, "revenue": 1}}


@pytest.mark.parametrize("edit", ["delete", "rename", "wrong-shape"])
def test_a_plan_edit_that_loses_the_plan_keeps_the_last_good_one(plan_client: Any, edit: str) -> None:
    client, plans = plan_client
    assert post(client, "/v1/track", BAD_ORDER, basic("WK_PLAN")).status_code == 400
    shop = plans / "shop.yaml"
    if edit == "delete":
        shop.unlink()
    elif edit == "rename":
        shop.write_text(shop.read_text().replace("plan: shop", "plan: boutique"))
    else:
        shop.write_text("plan: shop\nevents: [a, b]\n")
    time.sleep(0.6)
    assert post(client, "/v1/track", BAD_ORDER, basic("WK_PLAN")).status_code == 400


def test_plans_see_the_batch_envelope_context(plan_client: Any, tmp_path: Path) -> None:
    client, plans = plan_client
    shop = yaml.safe_load((plans / "shop.yaml").read_text())
    shop["context"] = {"tenant": {"type": "string", "enum": ["acme"]}}
    (plans / "shop.yaml").write_text(yaml.safe_dump(shop))
    item = {"type": "track", "event": "Products Searched", "userId": "u", "properties": {"query": "q"}}
    deadline = time.monotonic() + 10  # the registry polls every 0.2 s; a loaded machine may take longer
    while True:
        answer = post(client, "/v1/batch", {"context": {"tenant": "evil"}, "batch": [item]}, basic("WK_PLAN"))
        if answer.status_code != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert answer.status_code == 400 and answer.json()["errors"][0]["pointer"] == "/context/tenant"
    assert (
        post(client, "/v1/batch", {"context": {"tenant": "acme"}, "batch": [item]}, basic("WK_PLAN")).status_code == 200
    )


def test_a_plan_file_of_the_wrong_shape_fails_start_up_with_a_sentence(tmp_path: Path) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "shop.yaml").write_text("plan: shop\nevents: [a, b]\n")
    doc = config_doc()
    doc["workspaces"][0]["sources"][0]["trackingPlan"] = "shop"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(doc))
    settings = load(config, environ={"COLLECTOR_PLANS_DIR": str(plans), "COLLECTOR_STORAGE": "sqlite:///x.db"})
    with pytest.raises(ConfigError, match="tracking plans in"):
        create_app(settings)


def test_nullable_enum_admits_null() -> None:
    from collector.schema.dsl import Generator

    schema = Generator({}).field({"type": "string", "nullable": True, "enum": ["a", "b"]}, "x")
    assert schema["enum"] == ["a", "b", None]
