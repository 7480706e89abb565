"""Locust scenarios shaped like the collector's real traffic (see loadtests/README.md).

    locust -f loadtests/locustfile.py --config loadtests/locust.conf --host http://127.0.0.1:8088 \
        --write-key wk_… --token tok_…

Users, weighted roughly like a site with a few back-end services:
  BrowserVisitor   analytics-next default delivery: a page on load, several tracks, an identify on
                   login, each to /v1/{p,t,i} as text/plain with Basic auth; SDK metrics to /v1/m
  BatchingBrowser  analytics-next batching delivery: 10 events at a time to /v1/b
  ServerSDK        segment-python (/v1/batch of up to 100, gzipped or not) and analytics-node (15)
  ProfileUser      the profile API: POST /identify once, then /track/:userId merges and reads

A request counts as failed unless the answer is exactly what the SDKs expect (200 and
{"success": true} for events). A headless run exits non-zero when the failure ratio or the p99
crosses --max-fail-ratio / --max-p99-ms. --summary-file writes the totals as JSON (events sent,
profiles created), which the smoke test compares with what the collector stored.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
from locust import FastHttpUser, between, events, task
from locust.env import Environment

sys.path.insert(0, str(Path(__file__).resolve().parent))

import payloads  # noqa: E402  (the loadtests directory is not a package)

SUCCESS = {"success": True}
log = logging.getLogger("loadtests")

# Totals of this process; workers ship theirs to the master with every stats report.
totals = {"events_sent": 0, "profiles_created": 0, "profile_merges": 0}


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("collector")
    group.add_argument("--write-key", env_var="COLLECTOR_WRITE_KEY", default="", help="source write key (events)")
    group.add_argument("--token", env_var="COLLECTOR_TOKEN", default="", help="profile-API bearer token")
    group.add_argument(
        "--max-fail-ratio", env_var="LOCUST_MAX_FAIL_RATIO", type=float, default=0.0, help="exit 1 above this ratio"
    )
    group.add_argument("--max-p99-ms", env_var="LOCUST_MAX_P99_MS", type=float, default=500.0, help="exit 1 above")
    group.add_argument("--summary-file", env_var="LOCUST_SUMMARY_FILE", default="", help="write totals as JSON")
    group.add_argument(
        "--preflight",
        env_var="LOCUST_PREFLIGHT",
        action="store_true",
        default=False,
        help="send the CORS OPTIONS preflight a browser sends before each event POST",
    )


def post(client: Any, path: str, body: bytes, **kwargs: Any) -> Any:
    """POST raw bytes (geventhttpclient sends them as is; its stubs only admit str or dict)."""
    return client.post(path, data=body, **kwargs)


def options(environment: Environment) -> Any:
    return environment.parsed_options


def expect_success(response: Any) -> bool:
    """The SDKs' own rule: exactly 200 {"success": true}; anything else is a failure."""
    if response.status_code != 200:
        response.failure(f"status {response.status_code}: {response.text[:200]}")
        return False
    try:
        body = orjson.loads(response.content or b"")
    except orjson.JSONDecodeError:
        body = None
    if body != SUCCESS:
        response.failure(f"unexpected body: {response.text[:200]}")
        return False
    response.success()
    return True


class CollectorUser(FastHttpUser):
    abstract = True
    write_key = ""

    def on_start(self) -> None:
        self.write_key = options(self.environment).write_key
        if not self.write_key:
            raise ValueError("set --write-key (or COLLECTOR_WRITE_KEY)")

    def send_events(self, path: str, body: bytes, headers: dict[str, str], count: int, name: str) -> bool:
        if options(self.environment).preflight:
            self.preflight(path, name)
        with post(self.client, path, body, headers=headers, name=name, catch_response=True) as response:
            if expect_success(response):
                totals["events_sent"] += count
                return True
        return False

    def preflight(self, path: str, name: str) -> None:
        headers = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
            "Origin": payloads.SITE,
            "User-Agent": payloads.BROWSER_UA,
        }
        with self.client.request(
            "OPTIONS", path, headers=headers, name=f"OPTIONS {name}", catch_response=True
        ) as response:
            if 200 <= response.status_code < 300:
                response.success()
            else:
                response.failure(f"preflight status {response.status_code}")


class BrowserVisitor(CollectorUser):
    """One visitor's tab: page on load, tracks while browsing, identify when logging in."""

    weight = 6
    wait_time = between(0.2, 1.5)

    def on_start(self) -> None:
        super().on_start()
        self.anonymous_id = str(uuid.uuid4())
        self.user_id: str | None = None
        self.headers = payloads.browser_headers(self.write_key)
        self.calls = 0
        self.page()

    def post(self, short: str, message: dict[str, Any], name: str) -> None:
        self.calls += 1
        self.send_events(f"/v1/{short}", orjson.dumps(message), self.headers, 1, name)

    @task(2)
    def page(self) -> None:
        self.path, self.title = random.choice(payloads.PAGES)
        self.post(
            "p", payloads.browser_page(self.anonymous_id, self.user_id, self.write_key, self.path, self.title), "/v1/p"
        )

    @task(6)
    def track(self) -> None:
        event, properties = random.choice(payloads.TRACK_EVENTS)
        message = payloads.browser_track(
            self.anonymous_id, self.user_id, self.write_key, event, properties, self.path, self.title
        )
        self.post("t", message, "/v1/t")

    @task(1)
    def login(self) -> None:
        if self.user_id is not None:
            return self.track()
        self.user_id = payloads.random_user_id()
        self.post("i", payloads.browser_identify(self.anonymous_id, self.user_id, self.write_key), "/v1/i")
        return None

    @task(1)
    def metrics(self) -> None:
        """analytics-next's own telemetry: no auth, never retried, always 200."""
        if self.calls == 0:
            return
        with post(
            self.client,
            "/v1/m",
            payloads.METRICS_BODY,
            headers=payloads.metrics_headers(),
            name="/v1/m",
            catch_response=True,
        ) as response:
            expect_success(response)
        self.calls = 0


class BatchingBrowser(CollectorUser):
    """analytics-next with deliveryStrategy batching: a page and its events, 10 per /v1/b."""

    weight = 2
    wait_time = between(1.0, 3.0)
    batch_size = 10

    def on_start(self) -> None:
        super().on_start()
        self.anonymous_id = str(uuid.uuid4())
        self.user_id: str | None = None
        self.headers = payloads.browser_headers(self.write_key)

    @task
    def flush(self) -> None:
        path, title = random.choice(payloads.PAGES)
        batch = [payloads.browser_page(self.anonymous_id, self.user_id, self.write_key, path, title, sent_at=False)]
        if self.user_id is None and random.random() < 0.3:
            self.user_id = payloads.random_user_id()
            batch.append(payloads.browser_identify(self.anonymous_id, self.user_id, self.write_key, sent_at=False))
        while len(batch) < self.batch_size:
            event, properties = random.choice(payloads.TRACK_EVENTS)
            batch.append(
                payloads.browser_track(
                    self.anonymous_id, self.user_id, self.write_key, event, properties, path, title, sent_at=False
                )
            )
        body = orjson.dumps(payloads.browser_batch(batch, self.write_key))
        self.send_events("/v1/b", body, self.headers, len(batch), "/v1/b")


class ServerSDK(CollectorUser):
    """Back-end services: segment-python flushes up to 100 (some gzipped), analytics-node 15."""

    weight = 1
    wait_time = between(0.5, 1.0)

    def on_start(self) -> None:
        super().on_start()
        self.user_ids = [payloads.random_user_id() for _ in range(20)]

    @task(2)
    def python_batch(self) -> None:
        size = random.randint(1, 100)
        gzipped = random.random() < 0.5
        body = payloads.python_body(payloads.python_batch(self.user_ids, size, self.write_key), gzipped)
        headers = payloads.python_headers(self.write_key, gzipped)
        self.send_events("/v1/batch", body, headers, size, "/v1/batch (python" + (", gzip)" if gzipped else ")"))

    @task(1)
    def node_batch(self) -> None:
        body = orjson.dumps(payloads.node_batch(self.user_ids, 15, self.write_key))
        self.send_events("/v1/batch", body, payloads.node_headers(self.write_key), 15, "/v1/batch (node)")


class ProfileUser(FastHttpUser):
    """A back-end keeping one user's profile: created once, then traits merged as they change."""

    weight = 1
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        token = options(self.environment).token
        if not token:
            raise ValueError("set --token (or COLLECTOR_TOKEN)")
        self.headers = payloads.profile_headers(token)
        self.visits = 0
        self.user_id: str | None = None
        serial = random.randint(0, 10**9)
        with post(
            self.client,
            "/identify",
            orjson.dumps(payloads.profile_create_body(serial)),
            headers=self.headers,
            name="/identify",
            catch_response=True,
        ) as response:
            user = self.user_object(response)
            if user is not None:
                self.user_id = user["id"]
                totals["profiles_created"] += 1

    def user_object(self, response: Any) -> dict[str, Any] | None:
        if response.status_code != 200:
            response.failure(f"status {response.status_code}: {response.text[:200]}")
            return None
        try:
            user = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            user = None
        if not isinstance(user, dict) or not str(user.get("id", "")).startswith("usr_"):
            response.failure(f"not a user object: {response.text[:200]}")
            return None
        response.success()
        return user

    @task(5)
    def track(self) -> None:
        if self.user_id is None:
            return
        self.visits += 1
        body = orjson.dumps(payloads.profile_track_body(self.visits))
        with post(
            self.client,
            f"/track/{self.user_id}",
            body,
            headers=self.headers,
            name="/track/:userId",
            catch_response=True,
        ) as response:
            user = self.user_object(response)
            if user is not None:
                if user["traits"].get("visits") != self.visits:
                    response.failure(f"merge lost: visits {user['traits'].get('visits')} != {self.visits}")
                else:
                    totals["profile_merges"] += 1

    @task(1)
    def read(self) -> None:
        if self.user_id is None:
            return
        with self.client.get(
            f"/identify/{self.user_id}", headers=self.headers, name="/identify/:userId", catch_response=True
        ) as response:
            self.user_object(response)


# --- totals across workers, and the pass/fail verdict --------------------------------------------


@events.report_to_master.add_listener
def ship_totals(client_id: str, data: dict[str, Any]) -> None:
    data["collector_totals"] = dict(totals)
    for key in totals:
        totals[key] = 0


@events.worker_report.add_listener
def add_totals(client_id: str, data: dict[str, Any]) -> None:
    for key, value in data.get("collector_totals", {}).items():
        totals[key] = totals.get(key, 0) + value


@events.quitting.add_listener
def verdict(environment: Environment, **_kwargs: Any) -> None:
    """Exit 1 when the run crossed a threshold (on the master, or a standalone run)."""
    if environment.runner is None or type(environment.runner).__name__ == "WorkerRunner":
        return
    parsed = options(environment)
    stats = environment.stats.total
    p99 = stats.get_response_time_percentile(0.99) or 0.0
    problems = []
    if stats.num_requests == 0:
        problems.append("no request was made")
    if stats.fail_ratio > parsed.max_fail_ratio:
        problems.append(f"failure ratio {stats.fail_ratio:.4f} > {parsed.max_fail_ratio}")
    if p99 > parsed.max_p99_ms:
        problems.append(f"p99 {p99:.0f} ms > {parsed.max_p99_ms:g} ms")
    if problems:
        log.error("load test failed: %s", "; ".join(problems))
        environment.process_exit_code = 1
    if parsed.summary_file:
        summary: dict[str, Any] = dict(totals)
        summary |= {
            "requests": stats.num_requests,
            "failures": stats.num_failures,
            "fail_ratio": stats.fail_ratio,
            "p99_ms": p99,
            "passed": not problems,
            "by_name": {
                f"{entry.method} {entry.name}": {"requests": entry.num_requests, "failures": entry.num_failures}
                for entry in environment.stats.entries.values()
            },
        }
        Path(parsed.summary_file).write_text(json.dumps(summary, indent=2))
