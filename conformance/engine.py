"""The run stage: selected cases → requests against the target → verdicts → a results document.

Cases run in parallel (`workers`); the steps of one case run in order. Nothing here knows
about report formats: `reports` turns the results document into files.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from conformance import KIT_VERSION, SPEC_VERSION
from conformance.casefile import Case
from conformance.checks import CheckResult, evaluate, select
from conformance.readback import AdapterReadBack, HttpReadBack, ReadBack, ReadBackError
from conformance.template import Renderer, iso
from conformance.transport import Credentials, Exchange, build, secrets_of, send
from conformance.verdicts import BAD, apply_known_failing, is_known, judge, level

PROFILES = ("segment", "collector", "inspect")
# `core` was the one answer profile before `segment` and `collector` split it: it claims both.
ALIASES = {"core": ("segment", "collector")}


def claimed_profiles(names: list[str]) -> tuple[str, ...]:
    """The profiles a --profile list claims, in PROFILES order. `segment` is always claimed: the
    collector spec is stricter than Segment's, and inspect reads back what one of them promises."""
    wanted = {"segment"}
    for name in names:
        wanted.update(ALIASES.get(name, (name,)))
    unknown = sorted(wanted - set(PROFILES))
    if unknown:
        raise ValueError(f"unknown profile(s) {', '.join(unknown)}; choose from {', '.join(PROFILES)}")
    return tuple(p for p in PROFILES if p in wanted)


class Unreachable(Exception):
    """The target did not answer before any case ran (exit code 2)."""


@dataclass
class RunOptions:
    target: str
    write_key: str
    token: str | None = None
    other_token: str | None = None
    quarantine_write_key: str | None = None
    strict_write_key: str | None = None  # a source that rejects quality violations (feature quality_reject)
    profiles: tuple[str, ...] = ("segment",)
    inspect_url: str | None = None
    inspect_token: str | None = None
    inspect_adapter: str | None = None
    known_failing: list[str] = field(default_factory=list)
    workers: int = 4
    timeout: float = 10.0
    settle: float = 2.0
    consistency: str = "immediate"  # or "eventual": stored checks judge what is there after `settle`
    reuse_connections: bool = False  # default: every case opens its own connection
    run_id: str = ""
    # Exact request bodies of failed cases, by file name, for the report directory (replayed with
    # curl --data-binary @file); filled by run().
    attachments: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.profiles = claimed_profiles(list(self.profiles))

    def features(self) -> set[str]:
        """Capabilities this run declares; a case requiring another one is SKIPPED."""
        declared = set()
        if self.token:
            declared.add("profiles")
        if self.token and self.other_token:
            declared.add("second_workspace")
        if self.strict_write_key:
            declared.add("quality_reject")
        if "inspect" in self.profiles and (self.inspect_url or self.inspect_adapter):
            declared.add("read_back")
            if self.quarantine_write_key:
                declared.add("quarantine")
            if self.consistency == "eventual":
                declared.add("eventual_consistency")  # recorded in results.json's features
        return declared


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%y%m%d%H%M%S") + os.urandom(3).hex()


def digest(cases: list[Case]) -> str:
    text = json.dumps([case.raw for case in cases], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def probe(client: httpx.Client, target: str) -> None:
    try:
        client.get(target.rstrip("/") + "/", timeout=5)
    except httpx.HTTPError as exc:
        raise Unreachable(f"target {target} is unreachable: {exc!r}") from None


def make_read_back(options: RunOptions, client: httpx.Client) -> ReadBack | None:
    if "inspect" not in options.profiles:
        return None
    if options.inspect_adapter:
        return AdapterReadBack(options.inspect_adapter)
    if options.inspect_url:
        return HttpReadBack(client, options.inspect_url, options.inspect_token)
    return None


def skip_reason(case: Case, options: RunOptions, declared: set[str]) -> str | None:
    if case.profile not in options.profiles:
        return f"profile {case.profile} not claimed (--profile {case.profile})"
    if case.profile == "inspect" and "read_back" not in declared:
        return "profile inspect needs a read-back capability (--inspect-url or --inspect-adapter)"
    if case.profile == "inspect" and case.basis not in options.profiles:
        return f"checks what the {case.basis} profile promises, which is not claimed (--profile {case.basis})"
    missing = [feature for feature in case.requires if feature not in declared]
    if missing:
        return "requires " + ", ".join(missing) + " (not declared)"
    return None


def case_record(case: Case) -> dict[str, Any]:
    return {
        "id": case.id,
        "title": case.title,
        "suite": case.suite,
        "file": case.file,
        "profile": case.profile,
        "basis": case.basis if case.profile == "inspect" else case.profile,
        "status": case.status,
        "polarity": case.polarity,
        "tags": case.tags,
        "spec": case.spec,
        "verdict": "SKIPPED",
        "reason": "",
        "checks": [],
        "transcript": [],
        "curl": [],
        "durationMs": 0,
    }


def new_client(options: RunOptions) -> httpx.Client:
    limits = httpx.Limits(max_connections=max(4, options.workers * 2))
    return httpx.Client(timeout=options.timeout, limits=limits, follow_redirects=False)


def run_case(
    case: Case, options: RunOptions, client: httpx.Client, read_back: ReadBack | None, declared: set[str]
) -> dict[str, Any]:
    record = case_record(case)
    reason = skip_reason(case, options, declared)
    if reason:
        record["reason"] = reason
        return record
    if options.reuse_connections:
        return run_steps(case, options, client, read_back, record)
    # Its own connection: an unread body or a broken connection left by one case cannot fail the next.
    with new_client(options) as own:
        return run_steps(case, options, own, read_back, record)


def run_steps(
    case: Case, options: RunOptions, client: httpx.Client, read_back: ReadBack | None, record: dict[str, Any]
) -> dict[str, Any]:
    began = time.monotonic()
    credentials = Credentials(
        options.write_key, options.token, options.other_token, options.quarantine_write_key, options.strict_write_key
    )
    secrets = secrets_of(credentials)
    renderer = Renderer(options.run_id, case.id, options.write_key)
    results: list[CheckResult] = []
    exchanges: list[Exchange] = []
    meta = {"X-Conformance-Run": options.run_id, "X-Conformance-Case": case.id}
    verdict = ""
    stop_reason = ""
    try:
        for number, step in enumerate(case.steps):
            exchange, content = build(step.request, renderer, credentials, options.target)
            exchanges.append(exchange)
            send(client, exchange, content, meta)
            for check in step.checks:
                eventual = options.consistency == "eventual"
                result = evaluate(check, exchange, renderer, read_back, options.settle, eventual, options.profiles)
                result.step = number
                results.append(result)
            for name, path in step.save.items():
                found = select(exchange.json, path) if exchange.is_json else []
                if not found:
                    # A broken MUST already explains why a later step cannot run: that is a FAIL.
                    verdict = "FAIL" if judge(results) == "FAIL" else "ERROR"
                    stop_reason = f"step {number}: nothing at {path!r} to save as {name!r}; later steps not run"
                    break
                renderer.saved[name] = found[0]
            if verdict:
                break
    except httpx.HTTPError as exc:
        verdict, record["reason"] = "ERROR", f"request failed: {exc!r}"
    except ReadBackError as exc:
        verdict, record["reason"] = "ERROR", str(exc)
    except (KeyError, ValueError) as exc:
        verdict, record["reason"] = "ERROR", f"case could not be built: {exc}"
    except Exception as exc:  # a kit bug must cost one case an ERROR, not the whole run
        verdict, record["reason"] = "ERROR", f"kit error: {exc!r}"
    if verdict in ("", "FAIL"):
        verdict = judge(results)
        failed = [r for r in results if r.passed is False]
        record["reason"] = "; ".join(
            f"{r.level} {r.kind}: expected {json.dumps(r.expected, default=str)[:200]}, "
            f"got {json.dumps(r.actual, default=str)[:200]}" + (f" ({r.note})" if r.note else "")
            for r in failed
        )
        if stop_reason:
            record["reason"] += f"; {stop_reason}"
    elif stop_reason:
        record["reason"] = stop_reason
    record["verdict"] = apply_known_failing(verdict, is_known(case.id, options.known_failing))
    record["checks"] = [r.as_dict() for r in results]
    record["transcript"] = [e.transcript(secrets) for e in exchanges]
    if record["verdict"] not in ("PASS", "INFORMATIONAL"):
        for number, exchange in enumerate(exchanges):
            name = f"bodies/{case.id}.{number}.bin"
            line, attach = exchange.curl(secrets, name)
            record["curl"].append(line)
            if attach:
                options.attachments[name] = exchange.wire
                record["transcript"][number]["request"]["bodyFile"] = name
    record["durationMs"] = round((time.monotonic() - began) * 1000, 1)
    return record


def run(cases: list[Case], options: RunOptions) -> dict[str, Any]:
    """Run the cases; the results document (see schemas/results.schema.json)."""
    options.run_id = options.run_id or new_run_id()
    started = datetime.now(UTC)
    declared = options.features()
    options.attachments.clear()
    with new_client(options) as client:
        probe(client, options.target)
        read_back = make_read_back(options, client)
        complete, abort = True, None
        records: list[dict[str, Any]] = []
        pool = ThreadPoolExecutor(max_workers=max(1, options.workers))
        futures = [pool.submit(run_case, case, options, client, read_back, declared) for case in cases]
        try:
            records = [future.result() for future in futures]
        except KeyboardInterrupt:
            # Keep what finished: the report says the run is incomplete rather than lying by omission.
            complete, abort = False, "interrupted"
            records = [f.result() for f in futures if f.done() and not f.cancelled() and f.exception() is None]
        finally:
            pool.shutdown(wait=complete, cancel_futures=True)
    counts = Counter(record["verdict"] for record in records)
    inspect_declared = "read_back" in declared
    return {
        "kit": {"name": "conformance", "version": KIT_VERSION, "specVersion": SPEC_VERSION},
        "caseSetDigest": digest(cases),
        "runId": options.run_id,
        "target": options.target,
        "profiles": list(options.profiles),
        "features": sorted(declared),
        "startedAt": iso(started),
        "finishedAt": iso(datetime.now(UTC)),
        "complete": complete and len(records) == len(cases),
        "abortReason": abort,
        "level": level(records, options.profiles, inspect_declared),
        "counts": {verdict: counts.get(verdict, 0) for verdict in sorted(counts)},
        "conformant": not any(record["verdict"] in BAD for record in records),
        "cases": records,
    }


def exit_code(results: dict[str, Any]) -> int:
    return 0 if results["conformant"] and results["complete"] else 1
