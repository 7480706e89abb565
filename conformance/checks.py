"""The judging stage: one check of a step against the recorded exchange (and, for `stored`
checks, against the read-back capability). Pure except for read-back fetches.

Check kinds (exactly one per check, beside `level`):
  status: 200 | {in: [400, 413]}
  body_json: <value>                     the JSON body equals this value exactly
  json: {path, equals|contains|exists|absent|matches|type|startswith}
  header: {name, exists|absent|equals|matches}
  stored: {by, where, value, count, fields: {dotted.path: matcher}}     needs read-back
          where: events (default) | quarantine (what a quarantine source kept aside, by messageId)
  observe: header.NAME | json.PATH       recorded only (INFORMATIONAL)

A check may name a `profile` (collector): it is judged only when that profile is claimed, so one
case states both what Segment documents and what this project's stricter spec adds.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from conformance.readback import ReadBack
from conformance.template import Renderer
from conformance.transport import Exchange

MISSING = object()
ABSENT = "absent"  # how the report shows a field that is not there (not [] or null)


@dataclass
class CheckResult:
    level: str
    kind: str
    expected: Any
    actual: Any = None
    passed: bool | None = None  # None: skipped (capability not declared)
    note: str = ""
    step: int = 0
    profile: str | None = None
    details: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "kind": self.kind,
            "step": self.step,
            "expected": self.expected,
            "actual": self.actual,
            "outcome": "skipped" if self.passed is None else ("pass" if self.passed else "fail"),
            "note": self.note,
            "profile": self.profile,
        }


def check_kind(check: dict[str, Any]) -> str:
    kinds = [key for key in check if key not in ("level", "why", "profile")]
    return kinds[0]


# --- JSON paths: "errors[*].pointer", "data[0].id", "meta.limit", "" (the whole document) ---

TOKEN = re.compile(r"([^.\[\]]+)|\[(\*|\d+)\]")


def select(document: Any, path: str) -> list[Any]:
    """Every value at `path` (a list, since `[*]` fans out)."""
    current = [document]
    for match in TOKEN.finditer(path):
        key, index = match.groups()
        following: list[Any] = []
        for node in current:
            if key is not None:
                if isinstance(node, dict) and key in node:
                    following.append(node[key])
            elif index == "*":
                if isinstance(node, list):
                    following.extend(node)
            elif isinstance(node, list) and int(index) < len(node):
                following.append(node[int(index)])
        current = following
    return current


def dotted(document: Any, path: str) -> Any:
    found = select(document, path)
    return found[0] if found else MISSING


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def is_subset(small: Any, big: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and is_subset(v, big[k]) for k, v in small.items())
    return bool(small == big and type(small) is type(big))


def same_json(left: Any, right: Any) -> bool:
    """JSON equality that keeps true ≠ 1 (Python's == does not)."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(same_json(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(same_json(a, b) for a, b in zip(left, right, strict=True))
    return bool(left == right)


def match_value(matcher: dict[str, Any], value: Any, context: dict[str, Any]) -> tuple[bool, str]:
    """(ok, why-not) for one matcher on one value; `context` holds the whole stored event
    and the server's Date for relative matchers."""
    for name, expected in matcher.items():
        if name == "equals" and (value is MISSING or not same_json(value, expected)):
            return False, f"expected {expected!r}"
        if name == "not_equals" and value is not MISSING and same_json(value, expected):
            return False, f"must not be {expected!r}"
        if name == "exists" and (value is not MISSING) != bool(expected):
            return False, "missing" if expected else "must be absent"
        if name == "absent" and (value is MISSING) != bool(expected):
            return False, "must be absent" if expected else "missing"
        if name == "subset" and (value is MISSING or not is_subset(expected, value)):
            return False, f"must contain {expected!r}"
        if name == "startswith" and not (isinstance(value, str) and value.startswith(expected)):
            return False, f"must start with {expected!r}"
        if name == "matches" and not (isinstance(value, str) and re.fullmatch(expected, value)):
            return False, f"must match /{expected}/"
        if name == "contains":
            values = value if isinstance(value, list) else []
            if not any(same_json(item, expected) for item in values):
                return False, f"must contain {expected!r}"
        if name == "type":
            ok = {
                "string": isinstance(value, str),
                "number": isinstance(value, int | float) and not isinstance(value, bool),
                "object": isinstance(value, dict),
                "array": isinstance(value, list),
                "null": value is None,
                "datetime": parse_time(value) is not None,
                "ip": _is_ip(value),
            }.get(expected)
            if not ok:
                return False, f"must be of type {expected}"
        if name == "near":
            moment = parse_time(value)
            reference = context.get("server_date") or datetime.now(UTC)
            seconds = float(matcher.get("seconds", 5))
            if moment is None or abs((moment - reference).total_seconds()) > seconds:
                return False, f"must be within {seconds:g}s of the server's Date ({reference.isoformat()})"
        if name == "offset_from":
            moment = parse_time(value)
            base = parse_time(dotted(context.get("event"), expected["field"]))
            if moment is None or base is None:
                return False, f"needs datetimes here and at {expected['field']}"
            target = base + timedelta(seconds=float(expected["seconds"]))
            tolerance = float(expected.get("tolerance_ms", 2)) / 1000
            if abs((moment - target).total_seconds()) > tolerance:
                return False, f"must be {expected['field']} {float(expected['seconds']):+g}s ({target.isoformat()})"
    return True, ""


def _is_ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def server_date(exchange: Exchange) -> datetime | None:
    raw = exchange.response_headers.get("date")
    if not raw:
        return None
    try:
        return parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None


def evaluate(
    check: dict[str, Any],
    exchange: Exchange,
    renderer: Renderer,
    read_back: ReadBack | None,
    settle: float,
    eventual: bool = False,
    claimed: tuple[str, ...] = ("segment", "collector", "inspect"),
) -> CheckResult:
    """Judge one check; raises ReadBackError when the capability itself fails. `eventual`: the
    target declared eventually consistent read-back (see judge_stored). A check of a profile not
    in `claimed` is skipped."""
    level = check.get("level", "MUST")
    kind = check_kind(check)
    spec = renderer.render(check[kind])
    result = CheckResult(level, kind, spec, profile=check.get("profile"))
    if result.profile and result.profile not in claimed:
        result.note = f"skipped: profile {result.profile} not claimed"
    elif kind == "status":
        allowed = spec["in"] if isinstance(spec, dict) else [spec]
        result.actual = exchange.status
        result.passed = exchange.status in allowed
    elif kind == "body_json":
        result.actual = exchange.json if exchange.is_json else exchange.response_text[:500]
        result.passed = exchange.is_json and same_json(exchange.json, spec)
    elif kind == "json":
        found = select(exchange.json, spec["path"]) if exchange.is_json else []
        result.actual = ABSENT if not found else (found if len(found) != 1 else found[0])
        matcher = {k: v for k, v in spec.items() if k != "path"}
        if "contains" in matcher:
            result.passed = any(same_json(item, matcher["contains"]) for item in found)
        elif not found:
            result.passed = matcher.get("absent") is True or matcher.get("exists") is False
        else:
            result.passed = all(match_value(matcher, item, {})[0] for item in found)
    elif kind == "header":
        value = exchange.response_headers.get(spec["name"].lower(), MISSING)
        result.actual = ABSENT if value is MISSING else value
        matcher = {k: v for k, v in spec.items() if k != "name"}
        result.passed, result.note = match_value(matcher, value, {})
    elif kind == "observe":
        where, _, path = str(spec).partition(".")
        if where == "header":
            result.actual = exchange.response_headers.get(path.lower())
        else:
            found = select(exchange.json, path) if exchange.is_json else []
            result.actual = found[0] if len(found) == 1 else found
        result.passed = True
    elif kind == "stored":
        judge_stored(result, spec, exchange, read_back, settle, eventual)
    else:
        raise ValueError(f"unknown check kind {kind!r}")
    return result


def judge_stored(
    result: CheckResult,
    spec: dict[str, Any],
    exchange: Exchange,
    read_back: ReadBack | None,
    settle: float,
    eventual: bool = False,
) -> None:
    if read_back is None:
        result.passed = None
        result.note = "skipped: no read-back capability declared (profile inspect)"
        return
    by, value, count = spec.get("by", "messageId"), str(spec["value"]), int(spec.get("count", 1))
    reader = read_back  # not None from here on, also inside fetch()

    def fetch(wait: float) -> list[dict[str, Any]]:
        if spec.get("where") == "quarantine":
            return reader.fetch_quarantined(value, wait)
        return reader.fetch(by, value, wait)

    found = fetch(0)
    if eventual:
        judge_settled(result, spec, exchange, fetch, settle, found)
        return
    answered_2xx = exchange.status is not None and 200 <= exchange.status < 300
    if count > 0 and len(found) < count and not answered_2xx:
        result.actual = {"count": len(found)}
        result.passed = False
        result.note = (
            f"expected {count} stored event(s) with {by}={value}, found {len(found)} (answer {exchange.status})"
        )
        return
    if count > 0 and len(found) < count:
        # "A 2xx means durably stored": a 2xx'd event must be readable at once. Look again
        # after settling only to tell "stored late" from "never stored" in the report.
        later = fetch(settle)
        result.actual = {"count": len(found), "countAfterSettle": len(later)}
        result.passed = False
        result.note = (
            f"stored only after the answer ({len(later)} found within {settle:g}s): a 2xx must be readable at once"
            if len(later) >= count
            else f"expected {count} stored event(s) with {by}={value}, found {len(later)}"
        )
        return
    judge_found(result, spec, exchange, found)


def judge_settled(
    result: CheckResult,
    spec: dict[str, Any],
    exchange: Exchange,
    fetch: Callable[[float], list[dict[str, Any]]],
    settle: float,
    at_once: list[dict[str, Any]],
) -> None:
    """Eventually consistent read-back (declared with --consistency eventual): what is stored
    after `settle` seconds is judged, so a late write or a late duplicate still counts. An event
    a 2xx answered that was not readable at once misses a SHOULD instead of a MUST."""
    count = int(spec.get("count", 1))
    time.sleep(settle)
    settled = fetch(0)
    judge_found(result, spec, exchange, settled)
    answered_2xx = exchange.status is not None and 200 <= exchange.status < 300
    if result.passed and answered_2xx and len(at_once) < count:
        result.level = "SHOULD"
        result.passed = False
        result.note = (
            f"readable only after the answer ({len(at_once)} found at once, {len(settled)} after {settle:g}s):"
            " eventual consistency was declared, so this misses a SHOULD, not a MUST"
        )
    assert isinstance(result.actual, dict)
    result.actual["countAtOnce"] = len(at_once)


def judge_found(result: CheckResult, spec: dict[str, Any], exchange: Exchange, found: list[dict[str, Any]]) -> None:
    """The stored events found against the check's count and fields."""
    by, value, count = spec.get("by", "messageId"), str(spec["value"]), int(spec.get("count", 1))
    result.actual = {"count": len(found)}
    if len(found) != count:
        result.passed = False
        result.note = f"expected {count} stored event(s) with {by}={value}, found {len(found)}"
        return
    if not found:
        result.passed = True
        return
    event = found[0]
    context = {"event": event, "server_date": server_date(exchange)}
    failures = []
    actual_fields = {}
    for path, matcher in spec.get("fields", {}).items():
        actual = dotted(event, path)
        actual_fields[path] = ABSENT if actual is MISSING else actual
        ok, why = match_value(matcher, actual, context)
        if not ok:
            failures.append(f"{path}: {why} (stored: {'absent' if actual is MISSING else repr(actual)[:200]})")
    result.actual = {"count": len(found), "fields": actual_fields}
    result.passed = not failures
    result.note = "; ".join(failures)
