"""The event API end to end (in process, real SQLite file): paths, bodies, auth, dedupe, enrichment."""

from __future__ import annotations

import gc
import gzip
import json
import weakref
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from helpers import (
    ADMIN,
    OTHER_KEY,
    QUARANTINE_KEY,
    STRICT_KEY,
    WRITE_KEY,
    basic,
    bearer,
    config_doc,
    make_client,
    scrape,
    stored,
    value,
)
from starlette.testclient import TestClient

from collector.pipeline.enrichment import parse_time

FIXTURES = Path(__file__).parent / "fixtures"
SHORT = {"track": "t", "identify": "i", "page": "p", "screen": "s", "group": "g", "alias": "a"}
MINIMAL = {
    "track": {"event": "Clicked"},
    "identify": {"traits": {"email": "a@example.com"}},
    "page": {"name": "Home"},
    "screen": {"name": "Dashboard"},
    "group": {"groupId": "grp_1"},
    "alias": {"previousId": "anon-1"},
}


def post(client: TestClient, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    return client.post(
        path, content=orjson.dumps(body), headers={"Content-Type": "application/json", **(headers or {})}
    )


def assert_success(answer: Any) -> None:
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"success": True}
    assert answer.content == b'{"success":true}'


@pytest.mark.parametrize("call", list(MINIMAL))
@pytest.mark.parametrize("short", [False, True], ids=["long", "short"])
def test_every_call_path_stores_its_type(client: TestClient, call: str, short: bool) -> None:
    path = f"/v1/{SHORT[call] if short else call}"
    body = {"userId": "user-1", "messageId": f"m-{call}-{short}", **MINIMAL[call]}
    assert_success(post(client, path, body, basic(WRITE_KEY)))
    [event] = stored(client, messageId=f"m-{call}-{short}")
    assert event["type"] == call
    assert {k: event[k] for k in MINIMAL[call]} == MINIMAL[call]


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/import", "/v1/b"])
def test_batch_paths_store_every_item(client: TestClient, path: str) -> None:
    batch = [{"type": call, "userId": "u", "messageId": f"{path}-{call}", **MINIMAL[call]} for call in MINIMAL]
    assert_success(post(client, path, {"batch": batch, "writeKey": WRITE_KEY}))
    events = stored(client)
    assert sorted(e["messageId"] for e in events) == sorted(f"{path}-{call}" for call in MINIMAL)


def test_telemetry_is_answered_counted_and_not_stored(client: TestClient) -> None:
    series = {"series": [{"type": "Counter", "metric": "analytics_js.invoke", "value": 1, "tags": {}}]}
    assert_success(client.post("/v1/m", content=json.dumps(series), headers={"Content-Type": "text/plain"}))
    assert stored(client) == []
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    assert runtime.counters[("telemetry_requests", "-")] == 1
    assert runtime.counters[("telemetry_series", "-")] == 1


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "text/plain;charset=UTF-8", None])
def test_json_is_parsed_whatever_the_content_type(client: TestClient, content_type: str | None) -> None:
    headers = basic(WRITE_KEY) | ({"Content-Type": content_type} if content_type else {})
    body = orjson.dumps({"event": "E", "userId": "u", "messageId": f"ct-{content_type}"})
    assert_success(client.post("/v1/track", content=body, headers=headers))
    assert len(stored(client, messageId=f"ct-{content_type}")) == 1


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, no zlib header
    ],
    ids=["gzip", "deflate", "raw-deflate"],
)
def test_compressed_bodies_are_inflated(client: TestClient, encoding: str, compress: Any) -> None:
    body = orjson.dumps({"batch": [{"type": "track", "event": "Z", "userId": "u", "messageId": "z1"}]})
    headers = basic(WRITE_KEY) | {"Content-Encoding": encoding}
    assert_success(client.post("/v1/batch", content=compress(body), headers=headers))
    assert [e["event"] for e in stored(client)] == ["Z"]


def test_chunked_body_without_content_length(client: TestClient) -> None:
    payload = orjson.dumps({"event": "Chunked", "userId": "u", "messageId": "chunk-1"})

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(payload), 7):
            yield payload[start : start + 7]

    answer = client.post("/v1/track", content=chunks(), headers=basic(WRITE_KEY))
    assert_success(answer)
    assert stored(client, messageId="chunk-1")[0]["event"] == "Chunked"


# --- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "body_key", "query"),
    [
        (basic(WRITE_KEY), None, ""),
        ({"Authorization": "Basic V0tfVEVTVA=="}, None, ""),  # base64("WK_TEST"), no colon
        ({}, WRITE_KEY, ""),
        ({"Authorization": "Bearer some-oauth-token"}, WRITE_KEY, ""),
        ({}, None, f"?writeKey={WRITE_KEY}"),
    ],
    ids=["basic-colon", "basic-no-colon", "body", "bearer+body", "query"],
)
def test_every_auth_form_is_accepted(
    client: TestClient, headers: dict[str, str], body_key: str | None, query: str
) -> None:
    body: dict[str, Any] = {"event": "A", "userId": "u", "messageId": "auth-1"}
    if body_key:
        body["writeKey"] = body_key
    assert_success(post(client, "/v1/track" + query, body, headers))
    [event] = stored(client, messageId="auth-1")
    assert "writeKey" not in event  # credentials are never stored


def test_batch_envelope_write_key_and_per_item_keys_are_not_stored(client: TestClient) -> None:
    batch = {"writeKey": WRITE_KEY, "batch": [{"type": "track", "event": "A", "userId": "u", "writeKey": WRITE_KEY}]}
    assert_success(post(client, "/v1/b", batch))
    assert "writeKey" not in stored(client)[0]


@pytest.mark.parametrize(
    ("headers", "body_key", "message"),
    [
        ({}, None, "Missing write key"),
        ({}, "nope", "Unknown write key"),
        (basic("nope"), WRITE_KEY, "Unknown write key"),  # the header decides
        ({"Authorization": "Basic %%%"}, None, "Malformed Basic credentials"),
        ({"Authorization": "Bearer only-a-token"}, None, "Missing write key"),
    ],
)
def test_auth_failures_are_401_and_store_nothing(
    client: TestClient, headers: dict[str, str], body_key: str | None, message: str
) -> None:
    body: dict[str, Any] = {"event": "A", "userId": "u"}
    if body_key:
        body["writeKey"] = body_key
    answer = post(client, "/v1/track", body, headers)
    assert answer.status_code == 401
    assert answer.json()["message"] == message
    assert answer.json()["code"] == "unauthorized"
    assert stored(client) == []


# --- dedupe ---------------------------------------------------------------------------------------


def test_resent_message_is_200_stored_once_and_counted(client: TestClient) -> None:
    body = {"event": "A", "userId": "u", "messageId": "dup-1"}
    for _ in range(3):
        assert_success(post(client, "/v1/track", body, basic(WRITE_KEY)))
    batch = {"batch": [body | {"type": "track"}, body | {"type": "track"}]}
    assert_success(post(client, "/v1/batch", batch, basic(WRITE_KEY)))
    assert len(stored(client, messageId="dup-1")) == 1
    samples = scrape(client)
    assert value(samples, "collector_events_total", outcome="accepted", type="track", source="src_web") == 1
    assert value(samples, "collector_events_total", outcome="duplicate", type="track", source="src_web") == 4


def test_dedupe_is_per_workspace(client: TestClient) -> None:
    body = {"event": "A", "userId": "u", "messageId": "shared-id"}
    assert_success(post(client, "/v1/track", body, basic(WRITE_KEY)))
    assert_success(post(client, "/v1/track", body, basic(OTHER_KEY)))
    workspaces = sorted(
        item["workspaceId"]
        for item in client.get("/v1/events", params={"messageId": "shared-id"}, headers=bearer(ADMIN)).json()["data"]
    )
    assert workspaces == ["ws_OtherWorkspace02", "ws_TestWorkspace001"]


# --- seed 004 and real-client captures -----------------------------------------------------------


@pytest.mark.parametrize("fixture", ["seed004-track.json", "seed004-context-traits.json"])
@pytest.mark.parametrize("path", ["/v1/track", "/v1/t"])
def test_seed_examples_are_stored_with_enrichment(client: TestClient, fixture: str, path: str) -> None:
    sent = json.loads((FIXTURES / fixture).read_text())
    assert_success(post(client, path, sent, basic(WRITE_KEY)))
    [event] = stored(client, messageId=sent["messageId"])
    assert event["properties"] == sent["properties"]
    assert event["context"] == sent["context"]  # ip and userAgent were set by the client: kept
    assert event["event"] == sent["event"] and event["userId"] == sent["userId"]
    assert event["originalTimestamp"] == sent["timestamp"]
    assert event["receivedAt"] != sent["receivedAt"]  # the server's clock, not the client's
    # timestamp = receivedAt − (sentAt − timestamp)
    received, corrected = parse_time(event["receivedAt"]), parse_time(event["timestamp"])
    sent_at, client_time = parse_time(sent["sentAt"]), parse_time(sent["timestamp"])
    assert received and corrected and sent_at and client_time
    assert received - corrected == sent_at - client_time


def replay(client: TestClient, capture: str) -> list[dict[str, Any]]:
    """Send a capture's POSTs as recorded (path, headers, body); return the messages they carried."""
    sent = []
    for line in (FIXTURES / "captures" / capture).read_text().splitlines():
        request = json.loads(line)
        if request["method"] != "POST":
            continue
        headers = {
            name: value
            for name, value in request["headers"]
            if name.lower() not in ("host", "content-length", "connection", "accept-encoding")
        }
        answer = client.post(request["path"], content=request["body"].encode(), headers=headers)
        assert_success(answer)
        body = json.loads(request["body"])
        if request["path"] != "/v1/m":
            sent += body["batch"] if "batch" in body else [body]
    return sent


@pytest.mark.parametrize(
    "capture",
    [
        "analytics-next-browser-default.jsonl",
        "analytics-next-browser-batching.jsonl",
        "analytics-node.jsonl",
        "segment-python.jsonl",
    ],
)
def test_real_client_captures_are_stored_once_each(client: TestClient, capture: str) -> None:
    sent = replay(client, capture)
    assert sent
    events = {e["messageId"]: e for e in stored(client)}
    assert sorted(events) == sorted(m["messageId"] for m in sent)
    for message in sent:
        event = events[message["messageId"]]
        assert event["type"] == message["type"]
        for key in ("properties", "traits", "event", "groupId", "previousId"):
            if key in message:
                assert event[key] == message[key]
        if message.get("userId") is None:
            assert "userId" not in event  # null means absent
        assert event["context"]["library"] == message["context"]["library"]
    replay(client, capture)  # the SDKs' retries re-send the same messageIds
    assert len(stored(client)) == len(sent)


# --- quarantine ---------------------------------------------------------------------------------


def test_quarantine_mode_answers_200_and_keeps_invalid_events_with_errors(client: TestClient) -> None:
    batch = {
        "batch": [
            {"type": "track", "userId": "u", "messageId": "bad-1"},
            {"type": "track", "event": "Fine", "userId": "u", "messageId": "good-1"},
        ]
    }
    assert_success(post(client, "/v1/batch", batch, basic(QUARANTINE_KEY)))
    assert [e["messageId"] for e in stored(client)] == ["good-1"]
    quarantined = client.get("/v1/quarantine", headers=bearer(ADMIN)).json()["data"]
    assert len(quarantined) == 1
    assert quarantined[0]["messageId"] == "bad-1"
    assert quarantined[0]["errors"] == [
        {"pointer": "/event", "keyword": "required", "message": '"event" is a required property'}
    ]


MIXED_BATCH = {
    "batch": [
        {"type": "track", "event": "A", "userId": "u", "messageId": "ok-1"},
        {"type": "track", "event": "B", "userId": "u", "messageId": "bad-rev", "properties": {"revenue": "x"}},
        {"type": "identify", "messageId": "no-id"},
        {"type": "track", "event": "C", "anonymousId": "a", "messageId": "ok-2"},
    ]
}


def test_reject_mode_stores_the_valid_part_of_a_batch_and_says_so(client: TestClient) -> None:
    """The message without an identity breaks the contract; the string revenue is a quality
    problem: stored and flagged."""
    answer = post(client, "/v1/batch", MIXED_BATCH, basic(WRITE_KEY))
    assert answer.status_code == 400
    body = answer.json()
    assert body["code"] == "invalid_message" and body["accepted"] == 3 and body["rejected"] == 1
    assert [(e["index"], e["messageId"], e["pointer"], e["keyword"]) for e in body["errors"]] == [
        (2, "no-id", "/userId", "anyOf"),
    ]
    events = {e["messageId"]: e for e in stored(client)}
    assert sorted(events) == ["bad-rev", "ok-1", "ok-2"]
    assert events["bad-rev"]["properties"] == {"revenue": "x"}
    assert events["bad-rev"]["context"]["protocols"]["violations"] == [
        {
            "type": "Invalid Type",
            "field": "properties.revenue",
            "description": '"x" is not of types "null", "number"',
            "rule": "properties.revenue:type",
        }
    ]
    assert "protocols" not in events["ok-1"]["context"]


def test_a_source_that_rejects_quality_problems_refuses_them_with_the_contract_errors(client: TestClient) -> None:
    answer = post(client, "/v1/batch", MIXED_BATCH, basic(STRICT_KEY))
    assert answer.status_code == 400
    body = answer.json()
    assert body["code"] == "invalid_message" and body["accepted"] == 2 and body["rejected"] == 2
    assert [(e["index"], e["messageId"], e["pointer"], e["keyword"]) for e in body["errors"]] == [
        (1, "bad-rev", "/properties/revenue", "type"),
        (2, "no-id", "/userId", "anyOf"),
    ]
    assert sorted(e["messageId"] for e in stored(client)) == ["ok-1", "ok-2"]


def test_quality_quarantine_keeps_flagged_messages_aside_and_metrics_count_stored_ones(tmp_path: Path) -> None:
    doc = config_doc()
    doc["workspaces"][0]["sources"][0]["qualityEnforcement"] = "quarantine"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    with make_client(tmp_path / "c.yaml", f"sqlite:///{tmp_path / 'e.db'}") as strict:
        assert post(strict, "/v1/batch", MIXED_BATCH, basic(WRITE_KEY)).status_code == 400  # no-id: contract
        assert sorted(e["messageId"] for e in stored(strict)) == ["ok-1", "ok-2"]
        held = strict.get("/v1/quarantine", headers=bearer(ADMIN)).json()["data"]
        assert [(q["messageId"], q["errors"][0]["pointer"]) for q in held] == [("bad-rev", "/properties/revenue")]
        # A source that allows them (the default) stores and counts them, per rule.
        flagged = {"userId": "u", "event": "E", "properties": {"revenue": "1", "currency": "usd"}}
        for _ in range(2):
            assert post(strict, "/v1/track", flagged, basic(QUARANTINE_KEY)).status_code == 200
        samples = scrape(strict)
        for rule in ("properties.revenue:type", "properties.currency:pattern"):
            assert value(samples, "collector_quality_violations_total", source="src_q", rule=rule) == 2


def test_envelope_context_and_integrations_merge_into_items_item_wins(client: TestClient) -> None:
    batch = {
        "context": {"library": {"name": "env"}, "locale": "fr-FR"},
        "integrations": {"All": False, "Mixpanel": True},
        "batch": [
            {
                "type": "track",
                "event": "A",
                "userId": "u",
                "messageId": "m1",
                "context": {"locale": "en-US"},
                "integrations": {"Mixpanel": False},
            },
            {"type": "track", "event": "B", "userId": "u", "messageId": "m2"},
        ],
    }
    assert_success(post(client, "/v1/batch", batch, basic(WRITE_KEY)))
    events = {e["messageId"]: e for e in stored(client)}
    assert events["m1"]["context"]["locale"] == "en-US"
    assert events["m1"]["context"]["library"] == {"name": "env"}
    assert events["m1"]["integrations"] == {"All": False, "Mixpanel": False}
    assert events["m2"]["context"]["locale"] == "fr-FR"
    assert events["m2"]["integrations"] == {"All": False, "Mixpanel": True}


def test_one_received_at_per_request_and_generated_message_ids(client: TestClient) -> None:
    batch = {"batch": [{"type": "track", "event": str(i), "userId": "u"} for i in range(20)]}
    assert_success(post(client, "/v1/batch", batch, basic(WRITE_KEY)))
    events = stored(client)
    assert len(events) == 20
    assert len({e["receivedAt"] for e in events}) == 1
    assert len({e["messageId"] for e in events}) == 20
    assert all(e["messageId"].startswith("api-") and len(e["messageId"]) == 36 for e in events)


def test_client_values_for_server_fields_are_overwritten(client: TestClient) -> None:
    body = {
        "event": "A",
        "userId": "u",
        "messageId": "srv-1",
        "receivedAt": "2000-01-01T00:00:00Z",
        "originalTimestamp": "2000-01-01T00:00:00Z",
    }
    assert_success(post(client, "/v1/track", body, basic(WRITE_KEY)))
    [event] = stored(client, messageId="srv-1")
    assert event["receivedAt"] != "2000-01-01T00:00:00Z"
    assert "originalTimestamp" not in event  # no client timestamp was sent


def test_integer_ids_are_stored_as_strings(client: TestClient) -> None:
    assert_success(post(client, "/v1/identify", {"userId": 42, "messageId": "int-1"}, basic(WRITE_KEY)))
    assert stored(client, messageId="int-1")[0]["userId"] == "42"


def test_user_agent_header_fills_context_when_absent(client: TestClient) -> None:
    post(
        client,
        "/v1/track",
        {"event": "A", "userId": "u", "messageId": "ua-1"},
        basic(WRITE_KEY) | {"User-Agent": "sdk/1"},
    )
    post(
        client,
        "/v1/track",
        {"event": "A", "userId": "u", "messageId": "ua-2", "context": {"userAgent": "mine"}},
        basic(WRITE_KEY) | {"User-Agent": "sdk/1"},
    )
    assert stored(client, messageId="ua-1")[0]["context"]["userAgent"] == "sdk/1"
    assert stored(client, messageId="ua-2")[0]["context"]["userAgent"] == "mine"


def test_type_in_body_must_match_the_path(client: TestClient) -> None:
    answer = post(client, "/v1/track", {"type": "identify", "userId": "u"}, basic(WRITE_KEY))
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["pointer"] == "/type"
    assert stored(client) == []


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    answer = client.get("/health", headers={"X-Request-Id": "req-123.abc"})
    assert answer.headers["x-request-id"] == "req-123.abc"
    generated = client.get("/health", headers={"X-Request-Id": "bad id with spaces"}).headers["x-request-id"]
    assert generated != "bad id with spaces" and len(generated) == 24


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready"}


def test_ready_is_unready_before_the_store_is_open(config_path: Path, db_url: str) -> None:
    test_client = make_client(config_path, db_url)  # not entered: lifespan has not run
    answer = test_client.get("/ready")
    assert answer.status_code == 503
    assert answer.json()["code"] == "storage_unavailable"


def test_a_served_process_keeps_the_cyclic_gc_quiet_and_still_collects_cycles(config_path: Path, db_url: str) -> None:
    from collector.cli import quiet_garbage_collector

    defaults = gc.get_threshold()
    try:
        with make_client(config_path, db_url) as client:
            quiet_garbage_collector()  # what `collector serve` does in each process, after create_app
            assert gc.get_freeze_count() > 1000  # modules, schemas and validators are out of collections
            assert gc.get_threshold()[0] > defaults[0]

            class Node:
                pass

            cycle = Node()
            cycle.self = cycle  # type: ignore[attr-defined]
            alive = weakref.ref(cycle)
            del cycle
            held = [[] for _ in range(gc.get_threshold()[0] + 100)]  # past the threshold: a collection starts
            assert alive() is None, "cycles are still collected, without being asked to"
            del held
            body = orjson.dumps({"event": "E", "userId": "u", "messageId": "after-a-gc"})
            assert_success(client.post("/v1/t", content=body, headers=basic(WRITE_KEY)))
    finally:
        gc.unfreeze()
        gc.set_threshold(*defaults)
