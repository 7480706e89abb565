"""The last event of a page, sent on `pagehide` as the browser leaves it, in Debian's Chromium
against a real `collector serve` (tests/browser/unload.mjs drives it; unload.html is the page).

Each method runs 20 navigations in a row, each page sending one event as it is left; every one
must be stored (N of N). Run with -s to see the figures. The keepalive budget (64 KB in flight
per page) is measured too, for the README.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import ADMIN, ROOT, WRITE_KEY, Server, bearer, config_doc, scrape, start_server

BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
NAVIGATIONS = 20
SERVER_KEY = "WK_SERVER_ONLY"
# method → the Content-Type Chromium sends (none for a Blob without a type): all without a preflight
METHODS = {
    "beacon-string": "text/plain;charset=UTF-8",
    "beacon-blob": None,
    "keepalive": "text/plain",
    "form-beacon": "application/x-www-form-urlencoded;charset=UTF-8",
}


class PageHandler(http.server.SimpleHTTPRequestHandler):
    """Serves unload.html at every path (the query says what it does)."""

    def translate_path(self, path: str) -> str:
        return str(BROWSER_DIR / "unload.html")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(PageHandler))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("unload")
    doc = config_doc(ingestPrefixes=["/v1", "/e7"])
    doc["workspaces"][0]["sources"].append({"id": "src_api", "writeKeys": [{"key": SERVER_KEY, "kind": "server"}]})
    config = tmp / "collector.yaml"
    config.write_text(yaml.safe_dump(doc), encoding="utf-8")
    server = start_server(tmp, config, f"sqlite:///{tmp / 'events.db'}", env={"COLLECTOR_SQLITE_SYNCHRONOUS": "NORMAL"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def report(collector: Server, page_origin: str) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not CHROMIUM.exists() or not (BROWSER_DIR / "node_modules" / "playwright-core").exists():
        pytest.fail("browser tests need Debian chromium, node and `npm ci` in tests/browser (.ci/system-packages)")
    config = {
        "collector": collector.url,
        "pageOrigin": page_origin,
        "writeKey": WRITE_KEY,
        "serverKey": SERVER_KEY,
        "adminToken": ADMIN,
        "methods": list(METHODS),
        "navigations": NAVIGATIONS,
        "path": "/e7/t",  # an alias prefix, as a first-party set-up would use
        "runId": uuid.uuid4().hex[:12],
    }
    finished = subprocess.run(
        [node, str(BROWSER_DIR / "unload.mjs"), json.dumps(config)], cwd=BROWSER_DIR, capture_output=True, timeout=180
    )
    assert finished.returncode == 0, finished.stderr.decode(errors="replace")
    result: dict[str, Any] = json.loads(finished.stdout) | {"runId": config["runId"]}
    assert "error" not in result, result["error"] + "\n" + collector.log()
    return result


@pytest.mark.parametrize("method", list(METHODS))
def test_every_last_event_sent_on_pagehide_is_stored(report: dict[str, Any], method: str) -> None:
    log = report["methods"][method]
    print(f"\n{method}: {log['stored']} of {log['sent']} last events stored ({log['seconds']:.1f} s)")
    assert log["queued"] == ["true"] * NAVIGATIONS  # the browser took every one
    assert (log["stored"], log["storedPages"]) == (NAVIGATIONS, list(range(1, NAVIGATIONS + 1)))
    assert log["consoleErrors"] == []
    assert log["contentType"] == METHODS[method]


def test_no_request_needed_a_preflight(report: dict[str, Any], collector: Server) -> None:
    with httpx.Client() as client:
        samples = scrape(client, collector.url)
    counts: dict[tuple[str, str, str], float] = {}
    for (name, labels), count in samples.items():
        if name == "collector_request_duration_seconds_count":
            key = (dict(labels)["method"], dict(labels)["route"], dict(labels)["status"])
            counts[key] = counts.get(key, 0) + count
    assert counts[("POST", "/e7/t", "200")] == NAVIGATIONS * len(METHODS)
    assert not [key for key in counts if key[0] == "OPTIONS"], counts


def test_a_beacon_with_a_server_key_is_refused(report: dict[str, Any], collector: Server) -> None:
    assert report["budget"]["serverKeyBeaconQueued"] is True  # the browser sent it; the collector said no
    answer = httpx.get(
        f"{collector.url}/v1/events", params={"anonymousId": f"{report['runId']}-server-key"}, headers=bearer(ADMIN)
    )
    assert answer.status_code == 200 and answer.json()["data"] == []
    with httpx.Client() as client:
        samples = scrape(client, collector.url)
    refused = [
        count
        for (name, labels), count in samples.items()
        if name == "collector_request_duration_seconds_count" and ("status", "403") in labels
    ]
    assert refused == [1.0]


def test_keepalive_budget_is_64_kb_in_flight(report: dict[str, Any]) -> None:
    budget = report["budget"]
    print(f"\nkeepalive budget in Chromium: {budget}")
    assert budget["beacon70k"] is False and budget["beacon60k"] is True  # sendBeacon refuses past 64 KB
    sent, refused = 'sent 200 {"success":true}', "rejected: TypeError: Failed to fetch"
    assert (budget["keepalive70k"], budget["keepalive60k"], budget["keepalive30k"]) == (refused, sent, sent)
    assert sorted(budget["keepaliveTwo40kAtOnce"]) == [refused, sent]  # 80 KB in flight at once: one is refused
