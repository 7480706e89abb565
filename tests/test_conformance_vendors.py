"""The kit as a vendor meets it: an independent server written from Segment's docs only reaches the
Segment level, a black hole does not, failures replay byte for byte, and each case has its own
connection."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers import WRITE_KEY
from segment_minimal_server import BlackHoleHandler, serve

from conformance.casefile import Case, load_cases, select
from conformance.engine import RunOptions, run
from conformance.reports import summarize, write_all
from conformance.verdicts import OK


class NothingStored:
    """The read-back of a server that stores nothing: honest, and empty."""

    def fetch(self, field: str, value: str, wait: float) -> list[dict[str, Any]]:
        return []

    def fetch_quarantined(self, message_id: str, wait: float) -> list[dict[str, Any]]:
        return []


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return load_cases()


@pytest.fixture(scope="module")
def independent() -> Iterator[str]:
    server = serve(0, [WRITE_KEY])
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def black_hole() -> Iterator[tuple[str, ThreadingHTTPServer]]:
    server = serve(0, [], black_hole=True)
    yield f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()


def test_an_independent_segment_server_reaches_the_segment_level(independent: str, cases: list[Case]) -> None:
    results = run(cases, RunOptions(target=independent, write_key=WRITE_KEY, workers=4))
    verdicts = {c["id"]: c["verdict"] for c in results["cases"]}
    segment = [c.id for c in cases if c.profile == "segment"]
    assert {case_id: verdicts[case_id] for case_id in segment if verdicts[case_id] not in OK} == {}
    assert results["level"] == "Segment-compatible"
    assert results["conformant"] is True and "FAIL" not in results["counts"]
    assert verdicts["content.accept.deflate"] == "NON_STRICT"  # Segment documents no deflate: a SHOULD
    assert {c["verdict"] for c in results["cases"] if c["profile"] != "segment"} == {"SKIPPED"}
    assert summarize(results)["inspected"].startswith("Nothing was inspected")


def test_a_black_hole_fails_segment_and_inspect(black_hole: tuple[str, ThreadingHTTPServer], cases: list[Case]) -> None:
    url, _ = black_hole
    options = RunOptions(
        target=url,
        write_key=WRITE_KEY,
        profiles=("segment", "inspect"),
        inspect_adapter="test_conformance_vendors:NothingStored",
        workers=4,
        settle=0,
    )
    results = run(cases, options)
    assert results["level"] == "None" and results["conformant"] is False
    failed = {c["id"] for c in results["cases"] if c["verdict"] == "FAIL"}
    # Segment documents that invalid JSON and oversize bodies are refused: a black hole accepts them.
    assert {"content.reject.malformed-json", "limits.reject.event-over-max", "limits.reject.request-over-max"} <= failed
    inspected = {c["id"] for c in results["cases"] if c["profile"] == "inspect" and c["verdict"] == "FAIL"}
    assert "store.dedupe-resend" in inspected and "enrich.received-at-server-clock" in inspected
    fix_first = {item["area"] for item in summarize(results)["fixFirst"]}
    assert {"encodings", "limits", "validation", "enrichment"} <= fix_first


def test_a_gzip_failure_is_replayed_from_its_saved_body(
    black_hole: tuple[str, ThreadingHTTPServer], cases: list[Case], tmp_path: Path
) -> None:
    """The corrupt gzip body is saved beside the report and curl sends exactly those bytes again."""
    url, _ = black_hole
    options = RunOptions(target=url, write_key=WRITE_KEY)
    results = run(select(cases, ["content.reject.corrupt-gzip"], []), options)
    (case,) = results["cases"]
    assert case["verdict"] == "FAIL"
    (line,) = case["curl"]
    name = "bodies/content.reject.corrupt-gzip.0.bin"
    assert line.endswith(f"--data-binary @{name}") and "Content-Encoding: gzip" in line
    write_all(results, tmp_path, options.attachments)
    assert (tmp_path / name).read_bytes() == options.attachments[name] and (tmp_path / name).read_bytes()[
        :2
    ] == b"\x1f\x8b"
    shown = subprocess.run(
        ["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "WRITE_KEY": WRITE_KEY}
    )
    assert shown.stdout.startswith("HTTP/1.1 200"), shown.stdout + shown.stderr  # the same wrong answer


def test_each_case_opens_its_own_connection_unless_told_to_reuse(
    black_hole: tuple[str, ThreadingHTTPServer], cases: list[Case]
) -> None:
    url, server = black_hole
    chosen = select(cases, ["paths.accept.*"], [])
    ports: dict[bool, dict[str, set[int]]] = {}
    for reuse in (False, True):
        BlackHoleHandler.seen.clear()
        run(chosen, RunOptions(target=url, write_key=WRITE_KEY, workers=1, reuse_connections=reuse))
        by_case: dict[str, set[int]] = {}
        for case_id, port in BlackHoleHandler.seen:
            if not case_id:
                continue  # the probe before the first case
            by_case.setdefault(case_id, set()).add(port)
        ports[reuse] = by_case
    own = ports[False]
    assert len(own) == len(chosen)
    assert len(set().union(*own.values())) == len(own)  # no connection shared by two cases
    assert len(set().union(*ports[True].values())) < len(own)  # keep-alive: cases share connections


def test_a_missing_field_is_shown_as_absent(black_hole: tuple[str, ThreadingHTTPServer], cases: list[Case]) -> None:
    url, _ = black_hole
    options = RunOptions(target=url, write_key=WRITE_KEY, profiles=("segment", "collector"))
    (case,) = run(select(cases, ["track.reject.missing-event"], []), options)["cases"]
    pointer = [c for c in case["checks"] if c["kind"] == "json" and c["expected"]["path"] == "errors[*].pointer"]
    assert [c["actual"] for c in pointer] == ["absent"]
    assert 'got "absent"' in case["reason"]
