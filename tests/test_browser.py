"""The real browser client: @segment/analytics-next's UMD bundle in Debian's Chromium (playwright-core),
on a page served from a different loopback origin than the collector.

One driver run (tests/browser/driver.mjs) covers default delivery, batching delivery, loading with
only `cdnURL` (the settings endpoint), loading with the settings document of the alias prefix /e7
(so every call goes to /e7/…), and the live debugger; the tests below assert on its report
and on what the collector stored. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import ADMIN, OTHER_KEY, ROOT, WRITE_KEY, Server, bearer, start_server, write_config

from collector.http.browser import settings_document

BROWSER_DIR = ROOT / "tests" / "browser"
UMD_DIR = BROWSER_DIR / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
SCENARIOS = ("default", "batching", "settings", "prefix")
CALL_TYPES = ["alias", "group", "identify", "page", "track"]


class PageHandler(http.server.SimpleHTTPRequestHandler):
    """Serves page.html at / and the analytics-next UMD bundle (with its chunks) under /umd/."""

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0]
        if path.startswith("/umd/"):
            return str(UMD_DIR / Path(path[len("/umd/") :]).name)
        return str(BROWSER_DIR / "page.html")

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(PageHandler))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("browser")
    config = write_config(tmp / "collector.yaml", ingestPrefixes=["/v1", "/e7"])
    server = start_server(tmp, config, f"sqlite:///{tmp / 'events.db'}", env={"COLLECTOR_SQLITE_SYNCHRONOUS": "NORMAL"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def report(collector: Server, page_origin: str) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not CHROMIUM.exists() or not (BROWSER_DIR / "node_modules" / "playwright-core").exists():
        pytest.fail(
            "browser tests need Debian chromium, node and `npm ci` in tests/browser: "
            "the test session runs .ci/system-packages, which installs them when run as root"
        )
    ARTIFACTS.mkdir(exist_ok=True)
    config = {
        "collector": collector.url,
        "pageOrigin": page_origin,
        "writeKey": WRITE_KEY,
        "otherKey": OTHER_KEY,
        "adminToken": ADMIN,
        "artifacts": str(ARTIFACTS),
        "scenarios": list(SCENARIOS),
        "debugger": True,
    }
    finished = subprocess.run(
        [node, str(BROWSER_DIR / "driver.mjs"), json.dumps(config)],
        cwd=BROWSER_DIR,
        capture_output=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr.decode(errors="replace")
    result: dict[str, Any] = json.loads(finished.stdout)
    assert "error" not in result, result["error"] + "\n" + collector.log()
    return result


def stored_for(collector: Server, anonymous_id: str) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{collector.url}/v1/events", params={"anonymousId": anonymous_id, "limit": 100}, headers=bearer(ADMIN)
    )
    assert answer.status_code == 200
    return [item["event"] for item in answer.json()["data"]]


@pytest.mark.parametrize("mode", SCENARIOS)
def test_every_call_is_stored_exactly_once_without_retries_or_console_errors(
    report: dict[str, Any], collector: Server, mode: str
) -> None:
    log = report["scenarios"][mode]
    assert "error" not in log["result"], log["result"]
    assert log["consoleErrors"] == [] and log["pageErrors"] == [] and log["failedRequests"] == []
    events = stored_for(collector, log["result"]["anonymousId"])
    assert sorted(e["type"] for e in events) == CALL_TYPES
    assert len({e["messageId"] for e in events}) == 5 and all(e["messageId"].startswith("ajs-next-") for e in events)
    assert all(e["context"]["library"]["name"] == "analytics.js" for e in events)
    assert all("writeKey" not in e for e in events)  # never stored
    by_type = {e["type"]: e for e in events}
    assert by_type["track"]["event"] == "Course Clicked"
    assert by_type["identify"]["userId"] == f"user-{mode}"
    assert by_type["group"]["groupId"] == "grp-1"

    prefix = "/e7" if mode == "prefix" else "/v1"
    posts = [r for r in log["collectorRequests"] if r["method"] == "POST" and r["path"] != f"{prefix}/m"]
    assert all(r["status"] == 200 for r in posts), posts
    assert [r for r in posts if r["retryCount"] is not None] == []  # nothing was re-sent
    assert all(r["hasAuthorization"] and r["contentType"] == "text/plain" for r in posts)
    if mode == "batching":
        assert [r["path"] for r in posts] == ["/v1/b"]
    else:
        assert sorted(r["path"] for r in posts) == [f"{prefix}/{short}" for short in ("a", "g", "i", "p", "t")]
    assert (ARTIFACTS / f"browser-{mode}.png").stat().st_size > 1000


def test_settings_mode_fetched_settings_from_the_collector(report: dict[str, Any]) -> None:
    requests = report["scenarios"]["settings"]["collectorRequests"]
    fetched = [r for r in requests if r["path"] == f"/v1/projects/{WRITE_KEY}/settings"]
    assert [(r["method"], r["status"]) for r in fetched] == [("GET", 200)]
    inline = report["scenarios"]["default"]["collectorRequests"]
    assert not any("/projects/" in r["path"] for r in inline)  # cdnSettings given inline: no fetch


def test_settings_reached_on_an_alias_prefix_answer_that_prefix(report: dict[str, Any], collector: Server) -> None:
    log = report["scenarios"]["prefix"]
    fetched = [r for r in log["collectorRequests"] if "/projects/" in r["path"]]
    assert [(r["method"], r["path"], r["status"]) for r in fetched] == [
        ("GET", f"/e7/projects/{WRITE_KEY}/settings", 200)
    ]
    assert log["result"]["apiHost"] == collector.url.removeprefix("http://") + "/e7"


def test_nothing_was_deduplicated_so_nothing_was_sent_twice(report: dict[str, Any], collector: Server) -> None:
    metrics = httpx.get(f"{collector.url}/metrics", headers=bearer(ADMIN)).text
    lines = [
        line
        for line in metrics.splitlines()
        if line.startswith("collector_events_total{") and 'source="src_web"' in line
    ]
    outcomes: Counter[str] = Counter()
    for line in lines:
        outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
        outcomes[outcome] += int(float(line.rsplit(" ", 1)[1]))
    assert outcomes["duplicate"] == 0
    assert outcomes["accepted"] >= 5 * len(SCENARIOS)


def test_debugger_shows_the_past_then_events_and_validation_errors_live(
    report: dict[str, Any], collector: Server
) -> None:
    log = report["debugger"]
    assert log["consoleErrors"] == [] and log["pageErrors"] == []
    # Sent before the page was opened: shown from storage and receipts, newest first.
    assert log["historySent"] == [200, 200, 400]
    assert log["historyStatuses"] == ["rejected", "duplicate", "stored"]
    assert 3 <= log["earlierRows"] <= 50
    assert log["validStatus"] == 200 and log["invalidStatus"] == 400
    # waitForSelector had a 1 s budget after each send; the numbers are reported for the record
    assert log["validShownAfterMs"] <= 1500 and log["invalidShownAfterMs"] <= 1500
    assert "rejected" in log["invalidText"] and "/event" in log["invalidText"]  # the error, with its pointer
    assert log["visibleWithUserFilter"] == 2  # the valid and the invalid dbg-user messages
    assert log["visibleWithTypeFilter"] == log["identifyRows"] >= 1  # the live identify, and earlier ones
    assert log["visibleStatusesWhenRejected"] == ["rejected"] * len(log["visibleStatusesWhenRejected"])
    assert len(log["visibleStatusesWhenRejected"]) >= 2  # the earlier rejection and the live one
    assert log["visibleUnfiltered"] == log["rows"] >= log["earlierRows"] + 3
    assert (ARTIFACTS / "debugger.png").stat().st_size > 1000
    # "copy as curl" replays the entry: the stored one again is a duplicate, the rejected one is refused again.
    environ = {"PATH": os.environ["PATH"], "WRITE_KEY": OTHER_KEY}
    replayed = subprocess.run(["bash", "-c", log["curl"]["stored"]], capture_output=True, env=environ, timeout=30)
    assert replayed.returncode == 0 and json.loads(replayed.stdout) == {"success": True}, replayed.stderr
    receipts = httpx.get(f"{collector.url}/v1/receipts/{log['historyId']}", headers=bearer(ADMIN)).json()
    assert [r["status"] for r in receipts["receipts"]] == ["stored", "duplicate", "duplicate"]
    refused = subprocess.run(["bash", "-c", log["curl"]["rejected"]], capture_output=True, env=environ, timeout=30)
    assert json.loads(refused.stdout)["errors"][0]["pointer"] == "/event", refused.stdout
    unkeyed = subprocess.run(
        ["bash", "-c", log["curl"]["stored"]], capture_output=True, env={"PATH": os.environ["PATH"]}
    )
    assert unkeyed.returncode != 0 and b"WRITE_KEY" in unkeyed.stderr  # the key is never in the page


def test_settings_endpoint_points_analytics_at_this_collector(collector: Server) -> None:
    answer = httpx.get(f"{collector.url}/v1/projects/{WRITE_KEY}/settings")
    assert answer.status_code == 200
    segment = answer.json()["integrations"]["Segment.io"]
    host = collector.url.removeprefix("http://")
    assert segment == segment | {"apiKey": WRITE_KEY, "apiHost": f"{host}/v1", "protocol": "http"}
    missing = httpx.get(f"{collector.url}/v1/projects/WK_NOPE/settings")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_settings_document_uses_the_public_url_scheme_and_prefix() -> None:
    document = settings_document("wk", "https://collect.example.com/tracking")
    segment = document["integrations"]["Segment.io"]
    assert segment["apiHost"] == "collect.example.com/tracking/v1" and segment["protocol"] == "https"
    assert document["metrics"] == {"sampleRate": 0.1, "host": "collect.example.com/tracking/v1"}
    # Over http the SDK would send its metrics over https (it takes the protocol only from load options).
    assert settings_document("wk", "http://127.0.0.1:1")["metrics"]["sampleRate"] == 0
