"""Prometheus /metrics: events by outcome/type/source, request latency, storage writes, SDK telemetry."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from helpers import ADMIN, QUARANTINE_KEY, WRITE_KEY, basic, bearer, scrape, start_server, value
from starlette.testclient import TestClient

from collector.pipeline.metrics import Pool


def test_metrics_need_the_admin_token(client: TestClient) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer("tok_test_workspace")).status_code == 401


def test_events_are_counted_by_outcome_type_and_source(client: TestClient) -> None:
    key = basic(WRITE_KEY)
    assert (
        client.post("/v1/track", json={"event": "A", "userId": "u", "messageId": "m1"}, headers=key).status_code == 200
    )
    assert (
        client.post("/v1/track", json={"event": "A", "userId": "u", "messageId": "m1"}, headers=key).status_code == 200
    )
    batch = {
        "batch": [
            {"type": "identify", "userId": "u", "messageId": "m2"},
            {"type": "page", "userId": "u", "messageId": "m3"},
            {"type": "track", "userId": "u"},  # invalid: no event
        ]
    }
    assert client.post("/v1/batch", json=batch, headers=key).status_code == 400
    quarantined = client.post("/v1/t", json={"userId": "u"}, headers=basic(QUARANTINE_KEY))
    assert quarantined.status_code == 200
    assert client.post("/v1/m", content=b'{"series":[{"metric":"a"},{"metric":"b"}]}').status_code == 200

    samples = scrape(client)
    total = "collector_events_total"
    assert value(samples, total, outcome="accepted", type="track", source="src_web") == 1
    assert value(samples, total, outcome="duplicate", type="track", source="src_web") == 1
    assert value(samples, total, outcome="accepted", type="identify", source="src_web") == 1
    assert value(samples, total, outcome="accepted", type="page", source="src_web") == 1
    assert value(samples, total, outcome="rejected", type="track", source="src_web") == 1
    assert value(samples, total, outcome="quarantined", type="track", source="src_q") == 1
    assert value(samples, "collector_sdk_telemetry_requests_total") == 1
    assert value(samples, "collector_sdk_telemetry_series_total") == 2

    # 4 hand-overs to storage (track, track again, the batch's 2 valid, the quarantined one)
    assert value(samples, "collector_storage_write_seconds_count") == 4
    assert value(samples, "collector_storage_write_events_sum") == 1 + 1 + 2 + 1
    assert value(samples, "collector_storage_write_events_bucket", le="1.0") == 3

    latency = "collector_request_duration_seconds_count"
    assert value(samples, latency, method="POST", route="/v1/track", status="200") == 2
    assert value(samples, latency, method="POST", route="/v1/batch", status="400") == 1


def test_request_latency_uses_route_templates(client: TestClient) -> None:
    client.get("/v1/events/some-message-id", headers=bearer(ADMIN))
    client.get("/nowhere/at/all")
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    assert client.options("/v1/t", headers=preflight).status_code == 204
    assert client.options("/somewhere/else", headers=preflight).status_code == 204
    samples = scrape(client)
    latency = "collector_request_duration_seconds_count"
    assert value(samples, latency, method="OPTIONS", route="/v1/t", status="204") == 1
    assert value(samples, latency, method="OPTIONS", route="unmatched", status="204") == 1
    assert value(samples, latency, method="GET", route="/v1/events/{message_id}", status="404") == 1
    assert value(samples, latency, method="GET", route="unmatched", status="404") == 1
    assert not any("some-message-id" in str(labels) for (_name, labels) in samples)


def test_rate_limited_requests_are_counted(tmp_path: Any, config_path: Any, db_url: str) -> None:
    from helpers import make_client

    with make_client(config_path, db_url, COLLECTOR_RATE_LIMIT="0.01:1") as limited:
        codes = [limited.post("/v1/t", json={"event": "E", "userId": "u"}, headers=basic(WRITE_KEY)).status_code]
        codes.append(limited.post("/v1/t", json={"event": "E", "userId": "u"}, headers=basic(WRITE_KEY)).status_code)
        assert codes == [200, 429]
        assert value(scrape(limited), "collector_rate_limited_total", source="src_web") == 1


def test_access_and_error_logs_are_json_lines_with_request_ids(tmp_path: Any, config_path: Any, db_url: str) -> None:
    import json
    import time

    import httpx
    from helpers import start_server

    server = start_server(tmp_path, config_path, db_url, "--access-log")
    try:
        answer = httpx.post(
            f"{server.url}/v1/t",
            content=b"{broken",
            headers={**basic(WRITE_KEY), "X-Request-Id": "req-trace-42"},
        )
        assert answer.status_code == 400 and answer.headers["x-request-id"] == "req-trace-42"
        deadline = time.monotonic() + 5
        entries: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not any(e.get("request_id") == "req-trace-42" for e in entries):
            time.sleep(0.05)
            entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    finally:
        server.stop()
    [entry] = [e for e in entries if e.get("request_id") == "req-trace-42"]
    assert entry["logger"] == "collector.access" and entry["level"] == "info"
    assert (entry["method"], entry["path"], entry["status"]) == ("POST", "/v1/t", 400)
    assert isinstance(entry["duration_ms"], float | int)


def test_unknown_types_are_counted_as_unknown_and_a_failing_observer_is_not_a_500(client: TestClient) -> None:
    key = basic(WRITE_KEY)
    batch = {"batch": [{"type": "bogus", "userId": "u"}, {"type": "track", "event": "E", "userId": "u"}]}
    assert client.post("/v1/batch", json=batch, headers=key).status_code == 400
    assert value(scrape(client), "collector_events_total", outcome="rejected", type="unknown", source="src_web") == 1

    def broken(report: Any) -> None:
        raise RuntimeError("observer bug")

    client.app.state.runtime.listeners.insert(0, broken)  # type: ignore[attr-defined]
    answer = client.post("/v1/track", json={"event": "E", "userId": "u", "messageId": "after-bug"}, headers=key)
    assert answer.status_code == 200  # stored durably; the observer's fault is logged, not answered
    samples = scrape(client)
    assert value(samples, "collector_events_total", outcome="accepted", type="track", source="src_web") == 2


def test_workers_pool_their_metrics_so_any_scrape_counts_every_event(tmp_path: Path, config_path: Path) -> None:
    pool = tmp_path / "pool"
    storage = f"sqlite:///{tmp_path / 'events.db'}"
    node = start_server(tmp_path, config_path, storage, "--workers", "2", env={"COLLECTOR_WORKERS_DIR": str(pool)})
    try:
        sent = 60
        for number in range(sent):
            with httpx.Client() as client:  # a connection each: the kernel spreads them over the workers
                event = {"event": "Pooled", "userId": "u", "messageId": f"pool-{number}"}
                answer = client.post(node.url + "/v1/track", json=event, headers=basic(WRITE_KEY))
                assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 10
        while len(list(pool.glob("*.json"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(Pool.PUBLISH_SECONDS + 0.5)  # every worker has published since its last event
        per_worker = [
            sum(entry[-1] for entry in orjson.loads(p.read_bytes())["tallies"]["collector_events"])
            for p in pool.glob("*.json")
        ]
        assert len(per_worker) == 2 and sum(per_worker) == sent
        assert all(0 < count < sent for count in per_worker), f"one worker took every connection: {per_worker}"
        for _ in range(8):  # on a new connection each time, a scrape may reach either worker
            with httpx.Client() as client:
                samples = scrape(client, node.url)
            assert value(samples, "collector_events_total", outcome="accepted", type="track", source="src_web") == sent
    finally:
        node.stop()
    assert not list(pool.glob("*.partial")), "a worker's file is replaced whole, never left half-written"
