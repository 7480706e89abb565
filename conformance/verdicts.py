"""Verdicts per case and the compliance level of a run.

PASS           every applicable check passed
NON_STRICT     every MUST passed, a SHOULD failed (still conformant, not Strict)
INFORMATIONAL  only MAY/observe checks; values recorded
FAIL           a MUST check failed
ERROR          the kit could not judge (refused connection, timeout, broken read-back)
SKIPPED        profile or feature not declared, or filtered out; the reason is recorded
XFAIL / XPASS  a known-failing case failed / passed; XPASS fails the run
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from conformance.checks import CheckResult

VERDICTS = ("PASS", "NON_STRICT", "INFORMATIONAL", "FAIL", "ERROR", "SKIPPED", "XFAIL", "XPASS")
BAD = ("FAIL", "ERROR", "XPASS")


def judge(results: list[CheckResult]) -> str:
    judged = [r for r in results if r.passed is not None]
    if any(r.level == "MUST" and r.passed is False for r in judged):
        return "FAIL"
    if any(r.level == "SHOULD" and r.passed is False for r in judged):
        return "NON_STRICT"
    if judged and all(r.level == "MAY" or r.kind == "observe" for r in judged):
        return "INFORMATIONAL"
    return "PASS"


def apply_known_failing(verdict: str, known: bool) -> str:
    if not known:
        return verdict
    if verdict in ("FAIL", "ERROR"):
        return "XFAIL"
    if verdict in ("PASS", "NON_STRICT", "INFORMATIONAL"):
        return "XPASS"
    return verdict


def read_known_failing(path: Path) -> list[str]:
    """One case id (or glob) per line; `#` starts a comment, which should say why and
    link the bug. Keyed on permanent ids, so a list survives kit upgrades."""
    patterns = []
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            patterns.append(entry)
    return patterns


def is_known(case_id: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(case_id, pattern) for pattern in patterns)


def verdict_without_collector(case: dict[str, Any]) -> str:
    """A segment case's verdict on Segment's checks alone: a check only the collector spec makes (its
    `profile` is collector) does not withhold the Segment level when it fails."""
    if case["profile"] != "segment" or case["verdict"] not in ("FAIL", "NON_STRICT"):
        return str(case["verdict"])
    own = [c for c in case["checks"] if c.get("profile") != "collector" and c["outcome"] != "skipped"]
    if any(c["level"] == "MUST" and c["outcome"] == "fail" for c in own):
        return "FAIL"
    if any(c["level"] == "SHOULD" and c["outcome"] == "fail" for c in own):
        return "NON_STRICT"
    return "PASS"


LEVEL_NAMES = {"segment": "Segment-compatible", "collector": "Collector spec"}
LEVELS = ("None",) + tuple(name + suffix for name in LEVEL_NAMES.values() for suffix in ("", " + Inspect", ", Strict"))
OK = ("PASS", "NON_STRICT", "INFORMATIONAL")


def level(cases: list[dict[str, Any]], claimed: Iterable[str], inspect_declared: bool) -> str:
    """The level names what was claimed and met.

    Segment-compatible: every counted `segment` case passes (PASS, NON_STRICT or INFORMATIONAL).
    Collector spec: the same, and `collector` was claimed and every counted `collector` case passes.
    + Inspect: inspect was claimed with a read-back, and every counted `inspect` case of the level's
    profiles passes. Strict: + Inspect with no NON_STRICT among the counted cases of the level.
    Tentative and skipped cases never count; a known failure (XFAIL) still withholds the level."""
    claimed = set(claimed)
    counted = [c for c in cases if c["status"] == "stable" and c["verdict"] != "SKIPPED"]

    def met(profile: str) -> list[dict[str, Any]] | None:
        chosen = [c for c in counted if c["profile"] == profile]
        return chosen if all(verdict_without_collector(c) in OK for c in chosen) else None

    segment = met("segment")
    if not segment:
        return "None"
    base, considered, bases = "segment", segment, ["segment"]
    collector = met("collector") if "collector" in claimed else None
    # The collector spec also holds the segment cases to the checks it adds to them.
    if collector and all(c["verdict"] in OK for c in segment):
        base, considered, bases = "collector", segment + collector, ["segment", "collector"]
    name = LEVEL_NAMES[base]
    if "inspect" not in claimed or not inspect_declared:
        return name
    inspected = [c for c in counted if c["profile"] == "inspect" and c.get("basis") in bases]
    if not inspected or not all(c["verdict"] in OK for c in inspected):
        return name
    strictness = [c["verdict"] for c in inspected] + [
        verdict_without_collector(c) if base == "segment" else c["verdict"] for c in considered
    ]
    if "NON_STRICT" in strictness:
        return name + " + Inspect"
    return name + ", Strict"
