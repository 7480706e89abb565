"""The conformance kit against the reference collector (a real `collector serve` process), and
the kit's own promises: lint, reports, exit codes, skipping, known-failing lists, adapters."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import httpx
import jsonschema
import pytest
from helpers import (
    ADMIN,
    OTHER_TOKEN,
    QUARANTINE_KEY,
    ROOT,
    STRICT_KEY,
    TOKEN,
    WRITE_KEY,
    Server,
    free_port,
    start_server,
    write_config,
)

from conformance import cli
from conformance.casefile import load_cases
from conformance.lint import find_spec_dir, lint
from conformance.reports import validate_results
from conformance.template import Renderer


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("reference")
    config = write_config(directory / "collector.yaml")
    server = start_server(directory, config, f"sqlite:///{directory / 'events.db'}", name="reference")
    yield server
    server.stop()


def kit(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The kit as a vendor runs it: its own process, `python -m conformance`."""
    return subprocess.run(
        [sys.executable, "-m", "conformance", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=240,
    )


def full_run(server: Server, report: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--target",
        server.url,
        "--write-key",
        WRITE_KEY,
        "--token",
        TOKEN,
        "--other-token",
        OTHER_TOKEN,
        "--quarantine-write-key",
        QUARANTINE_KEY,
        "--strict-write-key",
        STRICT_KEY,
        "--profile",
        "segment,collector,inspect",
        "--inspect-url",
        server.url,
        "--inspect-token",
        ADMIN,
        "--workers",
        "6",
        "--report-dir",
        str(report),
        *extra,
    ]


def results_of(report: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((report / "results.json").read_text())
    return loaded


def test_reference_collector_reaches_strict_on_segment_collector_and_inspect(reference: Server, tmp_path: Path) -> None:
    report = tmp_path / "report"
    done = kit(*full_run(reference, report))
    assert done.returncode == 0, done.stdout + done.stderr
    results = results_of(report)
    validate_results(results)
    not_passed = {c["id"]: c["reason"] for c in results["cases"] if c["verdict"] != "PASS" and c["status"] == "stable"}
    assert not_passed == {}
    assert results["level"] == "Collector spec, Strict"
    assert results["complete"] is True
    assert results["profiles"] == ["segment", "collector", "inspect"]
    assert set(results["features"]) == {"profiles", "second_workspace", "read_back", "quarantine", "quality_reject"}
    assert len(results["cases"]) == len(load_cases()) >= 150
    # junit: one testsuite per case file, one testcase per case id.
    suites = ET.parse(report / "junit.xml").getroot().findall("testsuite")
    assert {s.get("name") for s in suites} >= {"track", "profiles", "limits", "enrichment"}
    assert sum(len(s.findall("testcase")) for s in suites) == len(results["cases"])
    html = (report / "report.html").read_text()
    assert "Level: Collector spec, Strict" in html and "track.reject.missing-event" in html
    assert "What to fix first" in html and "Nothing: no case failed." in html
    summary = (report / "summary.md").read_text()
    assert summary.startswith("# Conformance: Collector spec, Strict") and "| validation |" in summary


def test_ids_written_by_a_run_carry_its_run_id(reference: Server, tmp_path: Path) -> None:
    report = tmp_path / "report"
    done = kit(*full_run(reference, report, "--cases", "track.accept.minimal"))
    assert done.returncode == 0, done.stdout + done.stderr
    results = results_of(report)
    run_id = results["runId"]
    message_id = Renderer(run_id, "track.accept.minimal", WRITE_KEY).value("id", "m")
    assert run_id in message_id
    answer = httpx.get(
        f"{reference.url}/v1/events", params={"messageId": message_id}, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    (event,) = [item["event"] for item in answer.json()["data"]]
    assert run_id in event["userId"]


def test_segment_profile_alone_skips_collector_and_inspect_cases_and_says_nothing_was_inspected(
    reference: Server, tmp_path: Path
) -> None:
    report = tmp_path / "report"
    done = kit("run", "--target", reference.url, "--write-key", WRITE_KEY, "--report-dir", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    results = results_of(report)
    assert results["profiles"] == ["segment"]
    by_id = {c["id"]: c for c in results["cases"]}
    assert by_id["enrich.context-ip-added"]["verdict"] == "SKIPPED"
    assert "profile inspect not claimed" in by_id["enrich.context-ip-added"]["reason"]
    assert by_id["profiles.create.minimal"]["verdict"] == "SKIPPED"
    assert "profile collector not claimed" in by_id["profiles.create.minimal"]["reason"]
    minimal = by_id["track.accept.minimal"]
    assert minimal["verdict"] == "PASS"
    assert [c["outcome"] for c in minimal["checks"] if c["kind"] == "stored"] == ["skipped"]
    missing = by_id["track.reject.missing-event"]  # the collector's own checks are not judged for a segment claim
    assert {c["outcome"] for c in missing["checks"] if c["profile"] == "collector"} == {"skipped"}
    assert results["level"] == "Segment-compatible"
    assert "Nothing was inspected" in done.stdout
    assert "Nothing was inspected" in (report / "summary.md").read_text()
    assert "Nothing was inspected" in (report / "report.html").read_text()


def test_profile_claims_and_the_core_alias() -> None:
    from conformance.engine import claimed_profiles

    assert claimed_profiles([]) == ("segment",)
    assert claimed_profiles(["inspect"]) == ("segment", "inspect")
    assert claimed_profiles(["core", "inspect"]) == ("segment", "collector", "inspect")
    with pytest.raises(ValueError, match="bogus"):
        claimed_profiles(["bogus"])


def test_known_failing_case_that_passes_is_xpass_and_fails_the_run(reference: Server, tmp_path: Path) -> None:
    known = tmp_path / "known-failing.txt"
    known.write_text("# fixed upstream, should be removed\nresponse.success-exact\n")
    report = tmp_path / "report"
    done = kit(*full_run(reference, report, "--cases", "response.*", "--known-failing", str(known)))
    assert done.returncode == 1
    verdicts = {c["id"]: c["verdict"] for c in results_of(report)["cases"]}
    assert verdicts["response.success-exact"] == "XPASS"
    assert "XPASS" in done.stdout


def test_unreachable_target_is_exit_2(tmp_path: Path) -> None:
    done = kit("run", "--target", f"http://127.0.0.1:{free_port()}", "--write-key", "k", "--report-dir", str(tmp_path))
    assert done.returncode == 2
    assert "unreachable" in done.stderr
    assert not (tmp_path / "results.json").exists()


def test_usage_errors_are_exit_2(tmp_path: Path) -> None:
    assert kit("run", "--target", "http://127.0.0.1:1", "--write-key", "k", "--profile", "core,inspect").returncode == 2
    assert kit("run", "--target", "http://127.0.0.1:1", "--write-key", "k", "--profile", "bogus").returncode == 2
    assert kit("run", "--target", "http://127.0.0.1:1", "--write-key", "k", "--cases", "no.such.case").returncode == 2
    assert kit("run").returncode == 2  # argparse: missing --target


def test_python_adapter_reads_the_database_directly(reference: Server, tmp_path: Path) -> None:
    database = Path(reference.args[reference.args.index("--storage") + 1].removeprefix("sqlite:///"))
    adapter = tmp_path / "vendor_adapter.py"
    adapter.write_text(
        textwrap.dedent(
            f"""
            import json, sqlite3, time

            class Adapter:
                def fetch(self, field, value, wait):
                    column = {{"messageId": "message_id", "userId": "user_id"}}[field]
                    deadline = time.monotonic() + wait
                    while True:
                        with sqlite3.connect({str(database)!r}) as conn:
                            rows = conn.execute(f"SELECT body FROM events WHERE {{column}} = ?", (value,)).fetchall()
                        if rows or time.monotonic() >= deadline:
                            return [json.loads(body) for (body,) in rows]
                        time.sleep(0.05)
            """
        )
    )
    report = tmp_path / "report"
    args = [
        "run",
        "--target",
        reference.url,
        "--write-key",
        WRITE_KEY,
        "--profile",
        "inspect",
        "--inspect-adapter",
        "vendor_adapter:Adapter",
        "--cases",
        "enrich.*",
        "--cases",
        "store.*",
        "--report-dir",
        str(report),
    ]
    done = kit(*args, env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr
    verdicts = {c["id"]: c["verdict"] for c in results_of(report)["cases"]}
    assert verdicts["enrich.timestamp-skew-corrected"] == "PASS"
    assert verdicts["store.dedupe-resend"] == "PASS"
    assert sqlite3.connect(database).execute("SELECT count(*) FROM events").fetchone()[0] > 0


def test_lint_passes_on_the_shipped_cases(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["lint"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    count, _, problems = summary.partition(" cases, ")
    assert problems == "0 problems"
    assert int(count) >= 150


def test_case_ids_are_permanent_and_cover_the_issue() -> None:
    cases = load_cases()
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids))
    retired = (ROOT / "conformance" / "retired-ids.txt").read_text()
    assert "paths.reject.get-on-track" in retired and "paths.reject.get-on-track" not in ids
    for prefix in (
        "paths.accept.",
        "auth.reject.",
        "content.accept.text-plain",
        "limits.reject.",
        "profiles.isolation.",
    ):
        assert any(i.startswith(prefix) for i in ids), prefix
    negatives = [c for c in cases if c.polarity == "negative"]
    assert negatives and all(c.twin for c in negatives)


BROKEN_CASES = """
suite: broken
defaults: {method: POST, path: /v1/track, auth: basic}
cases:
  - id: broken.accept.ok
    title: a fine positive case
    spec: [{ref: "spec/calls/track.yaml#fields.event", quote: "Name of the action the user performed"}]
    profile: collector
    status: stable
    request: {body: {event: E, userId: u}}
    checks: [{level: MUST, status: 200}]
  - id: broken.reject.not-really
    title: a negative whose body is valid
    spec: [{ref: "spec/calls/track.yaml#fields.event", quote: "Name of the action the user performed"}]
    profile: collector
    status: stable
    polarity: negative
    twin: broken.accept.ok
    field: /event
    request: {body: {event: F, userId: u}}
    checks: [{level: MUST, status: 400}]
  - id: broken.accept.bad-anchor
    title: cites text the spec does not say
    spec: [{ref: "spec/calls/track.yaml#fields.event", quote: "events may be anything at all"}]
    profile: segment
    status: stable
    request: {body: {event: E, userId: u}}
    checks: [{level: MUST, status: 200}]
  - id: broken.accept.ok
    title: a duplicate id
    spec: [{ref: "spec/calls/nope.yaml#fields", quote: "nothing"}]
    profile: inspect
    status: stable
    request: {body: {event: E, userId: u}}
    checks: [{level: MUST, status: 200}]
"""


def test_lint_reports_each_broken_promise(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(BROKEN_CASES)
    spec_dir = find_spec_dir()
    assert spec_dir is not None
    problems, _ = lint(spec_dir, tmp_path)
    text = "\n".join(problems)
    assert "broken.reject.not-really: body must fail track.json at /event" in text
    assert "broken.accept.bad-anchor" in text and "quote not found" in text
    assert "broken.accept.ok: duplicate id" in text
    assert "nope.yaml does not exist" in text
    assert "profile inspect but no `stored` check" in text
    assert "broken.accept.bad-anchor: a segment case cites what Segment documents" in text


def test_lint_rejects_a_case_file_that_breaks_the_schema(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("suite: bad\ncases:\n  - id: NoDots\n    title: x\n")
    spec_dir = find_spec_dir()
    assert spec_dir is not None
    problems, _ = lint(spec_dir, tmp_path)
    assert len(problems) == 1 and problems[0].startswith("bad.yaml: at /cases/0")


def test_results_schema_rejects_a_document_without_completion_flag(reference: Server, tmp_path: Path) -> None:
    report = tmp_path / "report"
    assert kit(*full_run(reference, report, "--cases", "auth.accept.basic")).returncode == 0
    results = results_of(report)
    del results["complete"]
    with pytest.raises(jsonschema.ValidationError):
        validate_results(results)


def test_list_prints_every_case() -> None:
    done = kit("list", "--json")
    listed = json.loads(done.stdout)
    assert len(listed) == len(load_cases())
    assert {"id", "title", "profile", "status", "requires"} <= set(listed[0])


def test_the_kit_never_imports_collector() -> None:
    code = (
        "import sys, conformance.cli, conformance.lint, conformance.engine, conformance.reports;"
        "sys.exit(1 if any(m == 'collector' or m.startswith('collector.') for m in sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
    for path in (ROOT / "conformance").rglob("*.py"):
        assert "import collector" not in path.read_text() and "from collector" not in path.read_text(), path


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "nats"])
def test_reference_reaches_strict_on_real_backends(backend: str, tmp_path: Path) -> None:
    """The same kit run, with events in real PostgreSQL or NATS JetStream (profiles in PostgreSQL)."""
    from servers import start_nats, start_postgres

    postgres = start_postgres()
    nats = start_nats() if backend == "nats" else None
    try:
        profiles_url = postgres.create_database("profiles")
        storage = nats.url() if nats else postgres.create_database("events")
        config = write_config(tmp_path / "collector.yaml")
        server = start_server(tmp_path, config, storage, "--profiles", profiles_url, name=backend)
        try:
            report = tmp_path / "report"
            done = kit(*full_run(server, report))
            assert done.returncode == 0, done.stdout + done.stderr
            assert results_of(report)["level"] == "Collector spec, Strict"
        finally:
            server.stop()
    finally:
        if nats is not None:
            nats.remove()
        postgres.remove()


def test_compare_shows_where_runs_differ_and_fails_on_a_regression(reference: Server, tmp_path: Path) -> None:
    """Two real runs of the same cases, both claiming the collector spec: a source that rejects invalid
    messages (the baseline) and one that quarantines them, so its answers to invalid bodies are 200
    instead of 400: what Segment allows, not what the collector spec asks for."""
    reports = {}
    for name, key in (("reject", WRITE_KEY), ("quarantine", QUARANTINE_KEY)):
        reports[name] = tmp_path / name
        args = ["run", "--target", reference.url, "--write-key", key, "--profile", "collector", "--cases", "track.*"]
        kit(*args, "--report-dir", str(reports[name]))
        assert (reports[name] / "results.json").exists()
    verdicts = {
        name: {c["id"]: c["verdict"] for c in json.loads((path / "results.json").read_text())["cases"]}
        for name, path in reports.items()
    }
    regressed = sorted(c for c, v in verdicts["reject"].items() if v == "PASS" and verdicts["quarantine"][c] == "FAIL")
    assert regressed, "a quarantine source answers some negative case differently"
    assert "track.reject.missing-event" in regressed

    markdown = tmp_path / "matrix.md"
    runs = [f"reject={reports['reject']}", f"quarantine={reports['quarantine'] / 'results.json'}"]
    done = kit("compare", *runs, "--markdown", str(markdown), "--fail-on-regression")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"regressions against reject: {len(regressed)}" in done.stdout
    for case_id in regressed:
        assert f"  {case_id}: PASS → FAIL in quarantine" in done.stdout
    matrix_rows = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("track.")]
    same = [c for c in verdicts["reject"] if verdicts["reject"][c] == verdicts["quarantine"][c]]
    assert set(matrix_rows) == set(verdicts["reject"]) - set(same)  # only the cases that differ
    assert "| `track.reject.missing-event` | PASS | FAIL |" in markdown.read_text()

    same_run = kit("compare", f"a={reports['reject']}", f"b={reports['reject']}", "--fail-on-regression")
    assert same_run.returncode == 0 and "no regressions against a" in same_run.stdout
    every = kit("compare", f"a={reports['reject']}", f"b={reports['reject']}", "--all")
    assert sum(line.startswith("track.") for line in every.stdout.splitlines()) == len(verdicts["reject"])

    (tmp_path / "not-results.json").write_text('{"cases": []}')
    broken = kit("compare", str(reports["reject"]), str(tmp_path / "not-results.json"))
    assert broken.returncode == 2 and "not a conformance results document" in broken.stderr
    by_directory = kit("compare", str(reports["reject"]), str(reports["quarantine"]))  # same target URL
    assert by_directory.stdout.startswith("reject: level Collector spec")
    assert "\nquarantine: level Segment-compatible" in by_directory.stdout  # only the collector's checks failed
    unnamed = kit("compare", str(reports["reject"]), str(reports["reject"]))
    assert unnamed.returncode == 2 and "NAME=PATH" in unnamed.stderr
