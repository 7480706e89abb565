"""Enrichment rules: clock-skew correction and its fallbacks, client IP through trusted proxies, limits."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import WRITE_KEY, basic, make_client, stored

from collector.pipeline.enrichment import Arrival, enrich, format_time, micros

RECEIVED = datetime(2026, 11, 23, 12, 0, 0, 500_000, tzinfo=UTC)


def enriched(message: dict[str, Any], **arrival: Any) -> dict[str, Any]:
    context = Arrival(received_us=micros(RECEIVED), ip="198.51.100.1", user_agent=None, **arrival)
    stored = dict(message)
    enrich(stored, context, format_time(RECEIVED))  # in place; returns the repairs it made
    return stored


def test_per_event_sent_at_corrects_the_client_clock() -> None:
    # the client's clock is 1 h behind: it stamped the event 2 s before sending it
    event = enriched({"timestamp": "2026-11-23T11:00:00.000Z", "sentAt": "2026-11-23T11:00:02.000Z"})
    assert event["timestamp"] == "2026-11-23T11:59:58.500Z"
    assert event["originalTimestamp"] == "2026-11-23T11:00:00.000Z"
    assert event["receivedAt"] == "2026-11-23T12:00:00.500Z"


def test_envelope_sent_at_is_used_when_the_event_has_none() -> None:
    event = enriched({"timestamp": "2026-11-23T13:00:00.000+01:00"}, envelope_sent_at="2026-11-23T12:00:10.000Z")
    # +01:00 13:00 is 12:00Z; sent 10 s later by the client's clock
    assert event["timestamp"] == "2026-11-23T11:59:50.500Z"
    assert event["sentAt"] == "2026-11-23T12:00:10.000Z"


def test_event_sent_at_wins_over_the_envelope() -> None:
    event = enriched(
        {"timestamp": "2026-11-23T12:00:00Z", "sentAt": "2026-11-23T12:00:01Z"},
        envelope_sent_at="2026-11-23T12:05:00Z",
    )
    assert event["timestamp"] == "2026-11-23T11:59:59.500Z"


@pytest.mark.parametrize(
    ("message", "timestamp", "original"),
    [
        ({"timestamp": "2026-11-23T09:40:16.835+00:00"}, "2026-11-23T09:40:16.835Z", "2026-11-23T09:40:16.835+00:00"),
        (
            {"timestamp": "2026-11-23T09:40:16.835Z", "sentAt": "yesterday"},
            "2026-11-23T09:40:16.835Z",
            "2026-11-23T09:40:16.835Z",
        ),
        ({"timestamp": "2026-11-23T09:40:16"}, "2026-11-23T09:40:16.000Z", "2026-11-23T09:40:16"),  # no offset: UTC
        ({}, "2026-11-23T12:00:00.500Z", None),
        ({"sentAt": "2026-11-23T09:40:16Z"}, "2026-11-23T12:00:00.500Z", None),
        ({"timestamp": "soon", "sentAt": "2026-11-23T09:40:16Z"}, "2026-11-23T12:00:00.500Z", "soon"),
        (
            {"timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T23:59:59Z"},
            "0001-01-01T00:00:00.000Z",
            "0001-01-01T00:00:00Z",
        ),
    ],
    ids=["no-sentAt", "bad-sentAt", "naive-time", "no-timestamp", "sentAt-only", "bad-timestamp", "overflow"],
)
def test_timestamp_fallbacks(message: dict[str, Any], timestamp: str, original: str | None) -> None:
    event = enriched(message)
    assert event["timestamp"] == timestamp
    assert event.get("originalTimestamp") == original


def test_microsecond_python_times_are_accepted() -> None:
    event = enriched({"timestamp": "2026-11-23T09:40:16.835000+00:00", "sentAt": "2026-11-23T09:40:17.335098+00:00"})
    # 12:00:00.500 − 0.500098 s = 11:59:59.999902, written with milliseconds (truncated)
    assert event["timestamp"] == "2026-11-23T11:59:59.999Z"


def test_context_ip_from_peer_is_kept_when_client_set_one() -> None:
    assert enriched({"context": {"ip": "0.0.0.0"}})["context"]["ip"] == "0.0.0.0"
    assert enriched({})["context"]["ip"] == "198.51.100.1"


# --- trusted proxies (through the HTTP stack; the test client's peer is 203.0.113.7) -------------


def ip_of(tmp_path: Path, config_path: Path, trusted: str, forwarded: str | None) -> str:
    env = {"COLLECTOR_TRUSTED_PROXIES": trusted} if trusted else {}
    db = f"sqlite:///{tmp_path / ('ip-' + str(abs(hash((trusted, forwarded)))) + '.db')}"
    with make_client(config_path, db, **env) as client:
        headers = basic(WRITE_KEY) | ({"X-Forwarded-For": forwarded} if forwarded else {})
        answer = client.post("/v1/track", content=orjson.dumps({"event": "A", "userId": "u"}), headers=headers)
        assert answer.status_code == 200
        return str(stored(client)[0]["context"]["ip"])


@pytest.mark.parametrize(
    ("trusted", "forwarded", "expected"),
    [
        ("", None, "203.0.113.7"),
        ("", "1.2.3.4", "203.0.113.7"),  # no trusted proxies: the header is ignored
        ("10.0.0.0/8", "1.2.3.4", "203.0.113.7"),  # the peer is not a trusted proxy
        ("203.0.113.0/24", "1.2.3.4", "1.2.3.4"),
        ("203.0.113.0/24", "6.6.6.6, 1.2.3.4", "1.2.3.4"),  # only the hop the proxy saw is believed
        ("203.0.113.0/24,10.0.0.0/8", "6.6.6.6, 1.2.3.4, 10.1.1.1", "1.2.3.4"),  # chain of trusted proxies
        ("203.0.113.0/24", "garbage", "203.0.113.7"),
        ("203.0.113.0/24", "2001:db8::1", "2001:db8::1"),
    ],
)
def test_x_forwarded_for_only_from_trusted_proxies(
    tmp_path: Path, config_path: Path, trusted: str, forwarded: str | None, expected: str
) -> None:
    assert ip_of(tmp_path, config_path, trusted, forwarded) == expected


def test_limits_are_configurable(tmp_path: Path, config_path: Path) -> None:
    env = {"COLLECTOR_MAX_EVENT_BYTES": "200", "COLLECTOR_MAX_BATCH_EVENTS": "3"}
    with make_client(config_path, f"sqlite:///{tmp_path / 'l.db'}", **env) as client:
        big = {"event": "A", "userId": "u", "properties": {"x": "y" * 300}}
        answer = client.post("/v1/track", content=orjson.dumps(big), headers=basic(WRITE_KEY))
        assert answer.status_code == 413
        assert answer.json()["limit"] == "maxEventBytes" and answer.json()["limitValue"] == 200
        batch = {"batch": [{"type": "track", "event": "A", "userId": "u"}] * 4}
        answer = client.post("/v1/batch", content=orjson.dumps(batch), headers=basic(WRITE_KEY))
        assert answer.status_code == 413 and answer.json()["limit"] == "maxBatchEvents"
        assert stored(client) == []
