"""Rate limiting per source: token bucket, off by default, 429 with Retry-After only."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from helpers import OTHER_KEY, WRITE_KEY, basic, config_doc, make_client, start_server, stored

from collector.errors import ConfigError
from collector.pipeline.ratelimit import RateLimiter, SharedBuckets
from collector.settings import load, parse_rate_limit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert [limiter.wait_seconds("s", rate=2, burst=3) for _ in range(3)] == [0, 0, 0]
    assert limiter.wait_seconds("s", rate=2, burst=3) == pytest.approx(0.5)
    clock.now += 0.5  # one token back
    assert limiter.wait_seconds("s", rate=2, burst=3) == 0
    assert limiter.wait_seconds("s", rate=2, burst=3) > 0
    clock.now += 100  # refills only up to the burst
    assert [limiter.wait_seconds("s", rate=2, burst=3) for _ in range(4)][-1] > 0
    assert limiter.wait_seconds("other", rate=2, burst=3) == 0  # buckets are per key


def test_limiters_sharing_a_file_share_their_buckets(tmp_path: Path) -> None:
    clock = FakeClock()
    first, second = (RateLimiter(clock, SharedBuckets(tmp_path / "buckets", ["s", "t"])) for _ in range(2))
    assert [first.wait_seconds("s", rate=2, burst=3) for _ in range(2)] == [0, 0]
    assert second.wait_seconds("s", rate=2, burst=3) == 0
    assert second.wait_seconds("s", rate=2, burst=3) == pytest.approx(0.5)  # the first one took two of three
    assert first.wait_seconds("s", rate=2, burst=3) == pytest.approx(0.5)
    clock.now += 0.5
    assert second.wait_seconds("s", rate=2, burst=3) == 0
    assert first.wait_seconds("t", rate=2, burst=3) == 0  # one slot per source
    assert first.wait_seconds("unlisted", rate=2, burst=1) == 0  # a key without a slot: a bucket of its own
    assert second.wait_seconds("unlisted", rate=2, burst=1) == 0


def test_workers_keep_one_limit_between_them(tmp_path: Path, config_path: Path) -> None:
    shared = tmp_path / "shared"
    env = {"COLLECTOR_WORKERS_DIR": str(shared), "COLLECTOR_RATE_LIMIT": "0.01:5"}  # 5 now, then one per 100 s
    node = start_server(tmp_path, config_path, f"sqlite:///{tmp_path / 'events.db'}", "--workers", "2", env=env)
    try:
        statuses = []
        for number in range(24):
            with httpx.Client() as client:  # a connection each: the kernel spreads them over the workers
                event = {"event": "E", "anonymousId": "a", "messageId": f"w-{number}"}
                statuses.append(client.post(node.url + "/v1/t", json=event, headers=basic(WRITE_KEY)).status_code)
    finally:
        node.stop()  # each worker writes its final figures to the shared directory
    assert statuses.count(200) == 5 and statuses.count(429) == 19, statuses
    answered = []  # requests per worker (accepted + limited), from the figures the workers pooled
    for path in shared.glob("*.json"):
        state = json.loads(path.read_text())
        answered.append(
            sum(e[-1] for e in state["tallies"]["collector_events"]) + sum(c[-1] for c in state["counters"])
        )
    assert sorted(answered)[0] > 0 and sum(answered) == 24, f"both workers must have answered: {answered}"


def test_parse_rate_limit() -> None:
    assert parse_rate_limit("", "x") is None
    assert parse_rate_limit("off", "x") is None
    assert parse_rate_limit("5", "x") == (5.0, 5.0)
    assert parse_rate_limit("0.5", "x") == (0.5, 1.0)
    assert parse_rate_limit("10:50", "x") == (10.0, 50.0)
    for bad in ("fast", "-1", "1:0", "1:x"):
        with pytest.raises(ConfigError, match="x"):
            parse_rate_limit(bad, "x")


def test_off_by_default(config_path: Path) -> None:
    settings = load(config_path, environ={})
    assert settings.rate_limit is None
    assert all(source.rate_limit is None for source in settings.write_keys.values())


def test_over_the_limit_is_429_with_retry_after_only(tmp_path: Path, db_url: str) -> None:
    doc = config_doc()
    doc["workspaces"][1]["sources"][0]["rateLimit"] = "off"  # a source can opt out of the default
    path = tmp_path / "limited.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with make_client(path, db_url, COLLECTOR_RATE_LIMIT="0.01:2") as client:
        answers = [
            client.post(
                "/v1/t",
                content=orjson.dumps({"event": "E", "anonymousId": "a", "messageId": f"rl-{i}"}),
                headers={**basic(WRITE_KEY), "Origin": "http://127.0.0.1:1"},
            )
            for i in range(3)
        ]
        assert [a.status_code for a in answers] == [200, 200, 429]
        limited = answers[2]
        error = limited.json()
        assert error["code"] == "rate_limited" and error["status"] == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert "x-ratelimit-reset" not in limited.headers
        assert "retry-after" in limited.headers["access-control-expose-headers"].lower()
        assert sorted(e["messageId"] for e in stored(client)) == ["rl-0", "rl-1"]  # the 429'd one is not stored
        for i in range(5):
            other = client.post("/v1/t", json={"event": "E", "anonymousId": "a"}, headers=basic(OTHER_KEY))
            assert other.status_code == 200, i


def test_bad_rate_limit_config_fails_at_start(tmp_path: Path) -> None:
    doc = config_doc()
    doc["workspaces"][0]["sources"][0]["rateLimit"] = "lots"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"sources\[0\]\.rateLimit"):
        load(path, environ={})
