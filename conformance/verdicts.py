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


def level(cases: list[dict[str, Any]], inspect_declared: bool) -> str:
    """Core: every counted core case is PASS/NON_STRICT/INFORMATIONAL. Core+Inspect: the same
    for inspect cases too, with read-back declared. Strict: Core+Inspect with no NON_STRICT.
    Tentative and skipped cases never count; a known failure (XFAIL) still withholds the level."""
    counted = [c for c in cases if c["status"] == "stable" and c["verdict"] != "SKIPPED"]
    ok = ("PASS", "NON_STRICT", "INFORMATIONAL")
    core = [c for c in counted if c["profile"] == "core"]
    inspect = [c for c in counted if c["profile"] == "inspect"]
    if not core or not all(c["verdict"] in ok for c in core):
        return "None"
    if not inspect_declared or not inspect or not all(c["verdict"] in ok for c in inspect):
        return "Core"
    if any(c["verdict"] == "NON_STRICT" for c in counted):
        return "Core+Inspect"
    return "Strict"
