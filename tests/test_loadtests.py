"""The load-test kit keeps working: the Locust scenarios against a real collector process, and
the benchmark script's --quick mode. Neither asserts speed: they check that every request the
scenarios made succeeded and that what they sent is what the collector stored."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import ADMIN, ROOT, TOKEN, WRITE_KEY, bearer, start_server

LOADTESTS = ROOT / "loadtests"
SERVER_ENV = {"PYTHONPATH": str(ROOT)}  # the collector runs from this checkout, installed or not


def stored_count(url: str) -> int:
    """Every event stored, counted through the read-back API (paginated)."""
    total, cursor = 0, None
    with httpx.Client(base_url=url, headers=bearer(ADMIN), timeout=30) as client:
        while True:
            params = {"limit": "1000"} | ({"cursor": cursor} if cursor else {})
            page = client.get("/v1/events", params=params)
            assert page.status_code == 200, page.text
            body = page.json()
            total += len(body["data"])
            cursor = body["meta"]["nextCursor"]
            if not cursor:
                return total


def run_locust(url: str, tmp_path: Path, *extra: str, seconds: int = 6) -> tuple[subprocess.CompletedProcess, dict]:
    summary_file = tmp_path / "locust-summary.json"
    args = [
        sys.executable,
        "-m",
        "locust",
        "--config",
        str(LOADTESTS / "locust.conf"),
        "-f",
        str(LOADTESTS / "locustfile.py"),
        "--host",
        url,
        "--users",
        "20",
        "--spawn-rate",
        "20",
        "--run-time",
        f"{seconds}s",
        "--write-key",
        WRITE_KEY,
        "--token",
        TOKEN,
        "--summary-file",
        str(summary_file),
        *extra,
    ]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    return done, summary


def test_locust_scenarios_store_every_event_they_send(tmp_path: Path, config_path: Path, db_url: str) -> None:
    server = start_server(tmp_path, config_path, db_url, env=SERVER_ENV)
    try:
        done, summary = run_locust(server.url, tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert summary["failures"] == 0, summary
        assert summary["passed"] is True
        # Every kind of user ran: browser default and batching delivery, server SDKs, the profile API.
        names = {name for name, entry in summary["by_name"].items() if entry["requests"]}
        assert {"POST /v1/p", "POST /v1/b", "POST /identify", "POST /track/:userId"} <= names, names
        assert any(name.startswith("POST /v1/batch") for name in names), names
        assert summary["events_sent"] > 0 and summary["profiles_created"] > 0
        # What the users counted as accepted is exactly what the collector stored (ids are unique).
        assert stored_count(server.url) == summary["events_sent"]
    finally:
        server.stop()


def test_locust_run_fails_when_a_threshold_is_crossed(tmp_path: Path, config_path: Path, db_url: str) -> None:
    """A wrong profile token makes every profile request fail: the run must exit non-zero."""
    server = start_server(tmp_path, config_path, db_url, env=SERVER_ENV)
    try:
        done, summary = run_locust(server.url, tmp_path, "--token", "tok_wrong", seconds=3)
        assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
        assert summary["failures"] > 0 and summary["passed"] is False
        assert summary["by_name"]["POST /identify"]["failures"] > 0
    finally:
        server.stop()


def run_benchmark(tmp_path: Path, *args: str, timeout: float = 180) -> tuple[subprocess.CompletedProcess, Any]:
    """benchmark.py with `args`; it must exit 0. Its output, and the figures it wrote (--json)."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(LOADTESTS / "benchmark.py"), *args, "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads(out.read_text())


@pytest.mark.parametrize(("generator", "storage"), [("auto", "sqlite"), ("bundled", "sqlite"), ("auto", "nats")])
def test_benchmark_quick_mode_runs(tmp_path: Path, generator: str, storage: str) -> None:
    if generator == "auto" and not shutil.which("wrk"):
        pytest.skip("wrk is not installed (the bundled case covers the fallback)")
    # With wrk on SQLite, this checkout is also its own --baseline: the A/B mode runs a second collector.
    baseline = ["--baseline", str(LOADTESTS.parent)] if (generator, storage) == ("auto", "sqlite") else []
    done, summary = run_benchmark(tmp_path, "--quick", "--generator", generator, "--storage", storage, *baseline)
    assert "targets:" in done.stdout
    for name in ("bare", "durable", "single", "batch", "profile", "paced", "paced_bare", "paced_durable"):
        scenario = summary["scenarios"][name]
        assert scenario["requests"] > 0, (name, scenario)
        assert scenario["errors"] == 0, (name, scenario)
    assert summary["peak_rss_mb"]["collector"] > 0
    # The backend is named, and the CPU per event measured for the collector (and the NATS server).
    assert summary["storage"] == storage and f"storage: {storage}" in done.stdout
    for name in ("durable", "single", "batch"):
        assert summary["cpu_us_per_event"][name]["server"] > 0, summary["cpu_us_per_event"]
        if storage == "nats":
            assert summary["cpu_us_per_event"][name]["storage_server"] > 0, summary["cpu_us_per_event"]
    assert 0 < summary["fdatasync_ms"][0] <= summary["fdatasync_ms"][1]
    if baseline:
        for name in ("single_base", "batch_base"):
            assert summary["scenarios"][name]["requests"] > 0 and summary["scenarios"][name]["errors"] == 0
        assert set(summary["against_baseline"]) == {"single", "batch"}
        assert all(ratio > 0 for ratio in summary["against_baseline"].values())


def test_benchmark_workers_mode_compares_one_and_two_worker_processes(tmp_path: Path) -> None:
    """--workers 2 runs the bare route and the collector with 1 and 2 workers; a worker's CPU and
    memory count (they are the supervisor's children, which the parent alone would miss)."""
    if not shutil.which("wrk"):
        pytest.skip("wrk is not installed")
    done, summary = run_benchmark(tmp_path, "--quick", "--workers", "2")
    assert summary["workers"] == 2 and summary["storage"] == "sqlite"
    for kind in ("bare", "single", "batch"):
        figures = summary["scenarios"][kind]
        assert figures["requests"] > 0 and figures["errors"] == 0, (kind, figures)
        assert figures["ratio"] > 0, (kind, figures)
    single = summary["scenarios"]["single"]
    assert single["cpu_us_per_event_2"] > 0.5 * single["cpu_us_per_event_1"], single
    rss = summary["peak_rss_mb"]
    assert rss["collector_2w"] > rss["collector_1w"] > 0 and rss["bare_2w"] > rss["bare_1w"] > 0, rss
    assert "of the bare route's gain" in done.stdout


def test_benchmark_durable_floor_stores_each_body_before_answering(tmp_path: Path) -> None:
    """Scenario (1b) is only a floor if it really makes the collector's durable write: each 200
    means the body is a row of the events table, readable from another connection."""
    sys.path.insert(0, str(LOADTESTS))
    import benchmark
    from starlette.testclient import TestClient

    database = tmp_path / "durable.db"
    bodies = [json.dumps({"n": n}).encode() for n in range(5)]
    with TestClient(benchmark.durable_app(database)) as client:
        for body in bodies:
            answer = client.post("/v1/t", content=body)
            assert answer.status_code == 200 and answer.json() == {"success": True}
            with sqlite3.connect(database) as reader:  # before the next request: stored before the answer
                assert reader.execute("SELECT body FROM events ORDER BY position DESC LIMIT 1").fetchone() == (body,)
    with sqlite3.connect(database) as reader:
        rows = reader.execute("SELECT message_id, user_id, body FROM events ORDER BY position").fetchall()
    assert [row[2] for row in rows] == bodies
    assert len({row[0] for row in rows}) == len(bodies)  # a new messageId each: every request is an insert
    assert {row[1] for row in rows} == {"AiUGstSDIg"}  # the benchmark event's userId: both indexes are updated


def run_in_process(tmp_path: Path, *args: str) -> Any:
    """inprocess.py with `args` and --json: its parsed output."""
    done = subprocess.run(
        [sys.executable, str(LOADTESTS / "inprocess.py"), *args, "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout)


def test_in_process_profiler_stores_every_request(tmp_path: Path) -> None:
    rows = run_in_process(tmp_path, "--requests", "40", "--rounds", "1")
    assert {(row["name"], row["kind"]) for row in rows} == {
        (name, kind) for name in ("bare", "collector") for kind in ("single", "batch")
    }
    for row in rows:
        assert row["failed"] == 0 and row["cpu_us_per_request"] > 0, row


def test_in_process_a_b_against_a_baseline_checkout(tmp_path: Path) -> None:
    """This checkout as its own baseline: both sides run, in processes of their own, and are compared."""
    args = ["--kind", "single", "--requests", "40", "--rounds", "2", "--baseline", str(LOADTESTS.parent)]
    result = run_in_process(tmp_path, *args)
    assert {(row["checkout"], row["name"]) for row in result["rows"]} == {
        (checkout, name) for checkout in ("this", "baseline") for name in ("bare", "collector")
    }
    assert all(row["failed"] == 0 for row in result["rows"])
    assert set(result["cpu_ratio_to_baseline"]) == {"single"} and result["cpu_ratio_to_baseline"]["single"] > 0


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_soak_ten_minutes_flat_memory_zero_failures(tmp_path: Path) -> None:
    _done, soak = run_benchmark(tmp_path, "--soak", "600", timeout=1100)
    assert soak["requests"] > 0
    assert soak["errors"] == 0, soak
    # Flat: the last quarter's peak RSS within 10 % (+ 8 MB of allocator slack) of the first quarter's.
    assert soak["rss_last_quarter_mb"] <= soak["rss_first_quarter_mb"] * 1.10 + 8, soak
