"""The redaction stage: personal data named by a workspace's or source's `privacy.redact` rules,
dropped, hashed or masked before anything is stored.

    redact:
      - {path: properties.email, action: hash}
      - {path: traits.*.phone, action: mask}      # `*`: any object key or any array index
      - {detect: email, action: mask}

Path rules go where they point (a missing key is no change); detector rules scan every string
value, except the structural fields below, which neither kind of rule touches (the pipeline needs
them, and `context.ip` has its own policy): top-level `type`, `messageId`, `timestamp`,
`originalTimestamp`, `sentAt`, `receivedAt`, `version`, `channel`, `writeKey`, and `context.ip`,
`context.library`.

Actions: `drop` removes the key (an array element becomes null, so indices stay); `hash` replaces
the value by `hash_value` (an object or array by the hash of its canonical JSON); `mask` by
`mask_value`. A detector's hash or mask replaces only the matched text inside the string; its drop
removes the whole value. Hash and mask leave a null alone. `redact` returns one reason per change,
naming the rule, never a value: the stage's output can be logged and counted.

What each detector matches, and what it deliberately leaves alone (a false positive destroys data
nobody asked to lose, so every detector errs towards precision):

- email: `local@domain.tld`, the local part ASCII letters, digits and `._%+-` (no leading, trailing
  or doubled dot), the domain dot-separated labels of letters, digits and inner hyphens, ending in
  a 2-63 letter TLD. Not: `user@localhost` (no dot), `a@b.c1`, quoted or non-ASCII local parts.
- card: 13-19 digits, either one run or 3-6 groups of 3-6 digits joined by single spaces or dashes,
  first digit 2-6 (the issuers' ranges), passing Luhn. Not: a Luhn-failing order id, digits glued
  to a letter, `_`, `+` (a phone), `-` or `.` before them, or to a further `-digit`, `.digit`,
  `,digit` after them; a run of 20+ digits, or 13-19 inside one.
- iban: two uppercase letters, two check digits, then 11-30 uppercase letters or digits, compact or
  in space-separated groups of 4, whose ISO 7064 mod-97 is 1. Not: lower case, a wrong check digit.
- ipv4: four dot-separated octets 0-255 without leading zeros, not glued to a word character or to
  a further `.digit`. Not: `1.2.3.4.5` or `10.0.19045.1` (versions), `256.1.1.1`, `01.2.3.4`, or a
  product token such as `Chrome/120.0.0.0` (a letter then `/` before it).
- phone: international, `+` then 8-15 digits with spaces, dashes or parentheses between them; or
  national, 10-12 digits in 2-5 groups (the first of 2-5 digits, the rest of 2-4) separated by a
  space or dash, the first group maybe in parentheses (`(415) 555-2671`). Not: a separator-less
  run (`4155552671`, epoch seconds, 1234567), anything that starts like a date (`2024-01-31 1200`,
  `31/01/2024`), ISO times, and, by the digit counts, never a card (national stops at 12 digits,
  a card starts at 13 and never after `+`).

Only strings are scanned: a card number or phone sent as a JSON number needs a path rule (numbers
scanned would turn millisecond timestamps and snowflake ids into cards, one in ten by Luhn).
When detectors overlap in one string the earliest, then longest, match wins; when two rules name
the same detector the stronger action wins (drop > hash > mask).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, get_args

from collector.errors import ConfigError

Action = Literal["drop", "hash", "mask"]
Detector = Literal["email", "phone", "card", "iban", "ipv4"]
ACTIONS: tuple[Action, ...] = get_args(Action)
DETECTORS: tuple[Detector, ...] = get_args(Detector)
HASH_PREFIX = "hmac-sha256:"

STRUCTURAL = frozenset(
    {"type", "messageId", "timestamp", "originalTimestamp", "sentAt", "receivedAt", "version", "channel", "writeKey"}
)
STRUCTURAL_CONTEXT = frozenset({"ip", "library"})
_NOTHING: frozenset[str] = frozenset()
_STRENGTH = {"mask": 0, "hash": 1, "drop": 2}

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_PATTERNS: dict[Detector, re.Pattern[str]] = {
    "email": re.compile(
        r"(?<![\w.%+\-])[A-Za-z0-9_%+\-]+(?:\.[A-Za-z0-9_%+\-]+)*"
        r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![\w\-]|\.[A-Za-z0-9])"
    ),
    "card": re.compile(r"(?<![\w+\-.])(?:[0-9]{13,19}|[0-9]{3,6}(?:[ \-][0-9]{3,6}){2,5})(?![\w]|[\-.,][0-9])"),
    "iban": re.compile(
        r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)(?![A-Za-z0-9])"
    ),
    "ipv4": re.compile(rf"(?<![\w.])(?<![A-Za-z]/)(?:{_OCTET}\.){{3}}{_OCTET}(?![\w]|\.[0-9])"),
    "phone": re.compile(
        r"(?<![\w+])\+[0-9](?:[ \-()]{0,2}[0-9]){7,14}(?![ \-()]{0,2}[0-9]|[A-Za-z_])"
        r"|(?<![\w+\-./])(?:\([0-9]{2,5}\)[ \-]?|[0-9]{2,5}[ \-])[0-9]{2,4}(?:[ \-][0-9]{2,4}){0,3}"
        r"(?![\w]|[ \-./:][0-9])"
    ),
}
_CANDIDATE = re.compile("[@0-9]")
_DIGIT_RUN = re.compile(r"[0-9](?:[ ()\-]{0,2}[0-9]){7}")
_DATE_START = re.compile(
    r"(?:19|20)[0-9]{2}[ \-/](?:0[1-9]|1[0-2])[ \-/](?:0[1-9]|[12][0-9]|3[01])"
    r"|[0-9]{1,2}[ \-/][0-9]{1,2}[ \-/](?:19|20)[0-9]{2}"
)
_HASHED = re.compile(re.escape(HASH_PREFIX) + "[0-9a-f]{64}")


@dataclass(frozen=True)
class RedactRule:
    action: Action
    path: tuple[str, ...] | None = None
    detect: Detector | None = None

    def __post_init__(self) -> None:
        """Rules built in code get the checks a config file gets (no value is ever in the text)."""
        problem = _rule_problem(self.action, self.path, self.detect)
        if problem:
            raise ConfigError(f"RedactRule{problem}")


def _rule_problem(action: Any, path: tuple[str, ...] | None, detect: Any) -> str | None:
    if (path is None) == (detect is None):
        return f" must have exactly one of path and detect, got {'both' if path is not None else 'neither'}"
    if action not in ACTIONS:
        return f".action must be one of {', '.join(ACTIONS)}, got {_shown(action)}"
    if detect is not None and detect not in DETECTORS:
        return f".detect must be one of {', '.join(DETECTORS)}, got {_shown(detect)}"
    if path is not None:
        if not path or not all(path):
            return f".path must be a dotted path such as properties.email, got {_shown('.'.join(path))}"
        if _is_structural(path):
            return f".path {'.'.join(path)} is a structural field the pipeline needs; it cannot be redacted"
    return None


def _shown(value: Any) -> str:
    """A config value quoted for an error message, cut short: configs are ours, not event data."""
    text = repr(value) if isinstance(value, str) else type(value).__name__
    return text if len(text) <= 42 else text[:40] + "…'"


def _is_structural(path: Sequence[str]) -> bool:
    return path[0] in STRUCTURAL or (len(path) > 1 and path[0] == "context" and path[1] in STRUCTURAL_CONTEXT)


def parse_rules(raw: Any, where: str) -> tuple[RedactRule, ...]:
    """`raw` (a parsed YAML list, or None for none) as rules; `where` names it in the errors
    (`privacy.redact`), each of which names the rule's index and its problem."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{where} must be a list of rules, got {_shown(raw)}")
    return tuple(_parse_rule(item, f"{where}[{index}]") for index, item in enumerate(raw))


def _parse_rule(item: Any, where: str) -> RedactRule:
    if not isinstance(item, Mapping):
        kind = type(item).__name__
        raise ConfigError(f"{where} must be a mapping with path or detect, and action, got a {kind}")
    unknown = sorted(str(key) for key in item if key not in ("path", "detect", "action"))
    if unknown:
        raise ConfigError(f"{where} has unknown key {_shown(unknown[0])} (allowed: path, detect, action)")
    if "action" not in item:
        raise ConfigError(f"{where}.action is required, one of {', '.join(ACTIONS)}")
    raw_path = item.get("path")
    if raw_path is not None and not isinstance(raw_path, str):
        raise ConfigError(f"{where}.path must be a dotted path such as properties.email, got {_shown(raw_path)}")
    path = tuple(raw_path.split(".")) if raw_path is not None else None
    problem = _rule_problem(item["action"], path, item.get("detect"))
    if problem:
        raise ConfigError(f"{where}{problem}")
    return RedactRule(action=item["action"], path=path, detect=item.get("detect"))


# --- values -----------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _json_key(secret: bytes) -> bytes:
    """Non-strings are keyed apart from strings, so 42 and "42" never share a hash while a string's
    hash stays the plain HMAC of its UTF-8 (an analyst can compute it to join on an email)."""
    return hmac.new(secret, b"collector-redaction-json", hashlib.sha256).digest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def hash_value(secret: bytes, value: Any) -> str:
    """HMAC-SHA256 of a string's UTF-8 under `secret`, or of any other JSON value's canonical JSON
    text under a key derived from it; "hmac-sha256:" + hex. Deterministic, so hashes still join."""
    if isinstance(value, str):
        key, data = secret, value.encode("utf-8", "surrogatepass")
    else:
        key, data = _json_key(secret), canonical_json(value).encode("utf-8", "surrogatepass")
    return HASH_PREFIX + hmac.new(key, data, hashlib.sha256).hexdigest()


def luhn_valid(digits: str) -> bool:
    """The Luhn check of a card number; spaces and dashes are ignored, anything else fails."""
    digits = digits.replace(" ", "").replace("-", "")
    if not digits or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """ISO 13616 shape (country, check digits, 11-30 alphanumerics; spaces ignored) and mod-97 == 1."""
    compact = text.replace(" ", "").upper()
    if not re.fullmatch("[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}", compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _card_ok(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits)


def _phone_ok(text: str) -> bool:
    digits = sum(char.isdigit() for char in text)
    if text.count("(") != text.count(")"):
        return False
    if text.startswith("+"):
        return 8 <= digits <= 15
    return 10 <= digits <= 12 and not _DATE_START.match(text) and not _card_ok(text)


def _always(text: str) -> bool:
    return True


_VALID: dict[Detector, Callable[[str], bool]] = {
    "email": lambda text: len(text) <= 254 and text.index("@") <= 64,
    "card": _card_ok,
    "iban": iban_valid,
    "ipv4": _always,
    "phone": _phone_ok,
}


def _is(detector: Detector, text: str) -> bool:
    return _PATTERNS[detector].fullmatch(text) is not None and _VALID[detector](text)


def _stars_but(text: str, keep_last: int, counted: Callable[[str], bool], keep_first: int = 0) -> str:
    """`text` with every counted character starred except the first and last few: separators stay."""
    total = sum(map(counted, text))
    seen = 0
    out = []
    for char in text:
        if counted(char):
            seen += 1
            out.append(char if seen <= keep_first or seen > total - keep_last else "*")
        else:
            out.append(char)
    return "".join(out)


def _mask_plain(text: str) -> str:
    return text[:1] + "*" * (len(text) - 1) if len(text) > 1 else "*" * len(text)


_MASKS: dict[Detector, Callable[[str], str]] = {
    "email": lambda text: text[:1] + "***" + text[text.rindex("@") :],
    "card": lambda text: _stars_but(text, 4, str.isdigit),
    "phone": lambda text: _stars_but(text, 2, str.isdigit),
    "iban": lambda text: _stars_but(text, 4, str.isalnum, keep_first=2),
    "ipv4": lambda text: text[: text.rindex(".") + 1] + "*",
}


def _mask_text(text: str, detector: Detector | None) -> str:
    if detector is not None and _is(detector, text):
        return _MASKS[detector](text)
    shape = next((candidate for candidate in DETECTORS if _is(candidate, text)), None) if detector is None else None
    return _MASKS[shape](text) if shape else _mask_plain(text)


def mask_value(value: Any, detector: Detector | None = None) -> Any:
    """`value` with its shape kept and its content hidden: an email keeps its first letter and
    domain, a card its last 4 digits, a phone its last 2, an IBAN its country and last 4, an IPv4
    its first three octets (`detector` says which, else a whole string that is one is found);
    other strings keep their first character and length, numbers become their text so masked,
    a bool becomes "*" (its text would tell), null stays null, containers keep keys and lengths."""
    if isinstance(value, str):
        return _mask_text(value, detector)
    if isinstance(value, bool):
        return "*"
    if isinstance(value, int | float):
        return _mask_text(canonical_json(value), detector)
    if isinstance(value, dict | list):
        return _map_leaves(value, lambda leaf: mask_value(leaf, detector))
    return value


def _map_leaves(value: dict[str, Any] | list[Any], change: Callable[[Any], Any]) -> Any:
    """A copy of `value` with `change` applied to each non-container; iterative, so any depth."""
    root = value.copy()
    stack: list[dict[str, Any] | list[Any]] = [root]
    while stack:
        node = stack.pop()
        for key, item in _entries(node):
            if isinstance(item, dict | list):
                node[key] = item.copy()
                stack.append(node[key])
            else:
                node[key] = change(item)
    return root


def _entries(node: dict[str, Any] | list[Any]) -> list[tuple[Any, Any]]:
    return list(node.items()) if isinstance(node, dict) else list(enumerate(node))


# --- the stage --------------------------------------------------------------------------------

Span = tuple[int, int, Detector, Action]


class Redactor:
    """One workspace's or source's rules, ready to apply; built once at start-up."""

    def __init__(self, rules: Sequence[RedactRule], secret: bytes | None) -> None:
        for index, rule in enumerate(rules):
            if rule.action == "hash" and not secret:
                raise ConfigError(
                    f"redact rule {index} hashes, so a hashSecret is needed: "
                    "without a key, anyone could hash guesses and reverse it"
                )
        self._secret = secret or b""
        self._paths = tuple(rule for rule in rules if rule.path is not None)
        strongest: dict[Detector, Action] = {}
        for rule in rules:
            if rule.detect is not None and _STRENGTH[rule.action] > _STRENGTH.get(strongest.get(rule.detect, ""), -1):
                strongest[rule.detect] = rule.action
        self._detectors = tuple((detector, strongest[detector]) for detector in DETECTORS if detector in strongest)

    def redact(self, message: dict[str, Any]) -> list[str]:
        """Mutates message in place; one reason per change ("path:properties.email:hash",
        "detect:email:mask"), never a value. Path rules first, then one scan for the detectors."""
        reasons: list[str] = []
        for rule in self._paths:
            self._apply_path(message, rule, reasons)
        if self._detectors:
            self._scan(message, reasons)
        return reasons

    def _apply_path(self, message: dict[str, Any], rule: RedactRule, reasons: list[str]) -> None:
        assert rule.path is not None
        reason = f"path:{'.'.join(rule.path)}:{rule.action}"
        for node, key in _locate(message, rule.path):
            value = node[key]
            if rule.action == "drop":
                if isinstance(node, dict):
                    del node[key]
                elif value is None:
                    continue
                else:
                    node[key] = None
            elif value is None:
                continue
            elif rule.action == "hash":
                node[key] = hash_value(self._secret, value)
            else:
                masked = mask_value(value)
                if masked == value:
                    continue
                node[key] = masked
            reasons.append(reason)

    def _scan(self, message: dict[str, Any], reasons: list[str]) -> None:
        """Every string value outside the structural fields; iterative, so any depth."""
        stack: list[tuple[Any, frozenset[str]]] = [(message, STRUCTURAL)]  # dicts and lists
        while stack:
            node, skip = stack.pop()
            doomed = []
            for key, value in node.items() if isinstance(node, dict) else enumerate(node):
                if skip and key in skip:
                    continue
                if isinstance(value, str):
                    if not _CANDIDATE.search(value):  # most strings: no '@' and no digit
                        continue
                    redacted = self._redact_text(value, reasons)
                    if redacted is None:
                        doomed.append(key)
                    elif redacted is not value:
                        node[key] = redacted
                elif isinstance(value, dict | list):
                    inner = STRUCTURAL_CONTEXT if node is message and key == "context" else _NOTHING
                    stack.append((value, inner))
            for key in doomed:
                if isinstance(node, dict):
                    del node[key]
                else:
                    node[key] = None

    def _redact_text(self, text: str, reasons: list[str]) -> str | None:
        """`text` with each match replaced, itself when nothing matched, None when a match drops it."""
        spans = self._find(text)
        if not spans:
            return text
        for _start, _end, detector, action in spans:
            if action == "drop":
                reasons.append(f"detect:{detector}:drop")
                return None
        pieces = []
        done = 0
        for start, end, detector, action in spans:
            found = text[start:end]
            replaced = hash_value(self._secret, found) if action == "hash" else _MASKS[detector](found)
            pieces += [text[done:start], replaced]
            done = end
            reasons.append(f"detect:{detector}:{action}")
        pieces.append(text[done:])
        return "".join(pieces)

    def _find(self, text: str) -> list[Span]:
        """The matches, without overlaps; the cheap tests first, since most strings hold none."""
        if text.startswith(HASH_PREFIX) and _HASHED.fullmatch(text):
            return []
        has_at = "@" in text
        has_run: bool | None = None  # 8 digits close together: any card or phone has them
        spans: list[Span] = []
        for detector, action in self._detectors:
            if detector == "email":
                if not has_at:
                    continue
            elif detector == "card" or detector == "phone":
                if has_run is None:
                    has_run = _DIGIT_RUN.search(text) is not None
                if not has_run:
                    continue
            elif detector == "ipv4" and "." not in text:
                continue
            spans += _matches(text, detector, action)
        return _without_overlaps(spans)


def _matches(text: str, detector: Detector, action: Action) -> list[Span]:
    pattern, valid = _PATTERNS[detector], _VALID[detector]
    found: list[Span] = []
    match = pattern.search(text)
    while match:  # a lookbehind sees before `pos`, so this is finditer without its cost per string
        if valid(match[0]):
            found.append((match.start(), match.end(), detector, action))
        match = pattern.search(text, match.end())
    return found


def _without_overlaps(spans: list[Span]) -> list[Span]:
    if len(spans) < 2:
        return spans
    kept: list[Span] = []
    for span in sorted(spans, key=lambda span: (span[0], -span[1])):
        if not kept or span[0] >= kept[-1][1]:
            kept.append(span)
    return kept


def _locate(message: dict[str, Any], path: tuple[str, ...]) -> Iterator[tuple[Any, Any]]:
    """(container, key) for each place `path` reaches, `*` fanning out; structural fields excluded."""
    level: list[Any] = [message]
    for segment in path[:-1]:
        level = [
            node[key] for node in level for key in _keys(node, segment, message) if isinstance(node[key], dict | list)
        ]
    targets = [(node, key) for node in level for key in _keys(node, path[-1], message)]
    for node, key in targets:
        if isinstance(node, list) or key in node:  # an earlier target may have been this one
            yield node, key


def _keys(node: Any, segment: str, message: dict[str, Any]) -> list[Any]:
    if isinstance(node, dict):
        keys = list(node) if segment == "*" else [segment] if segment in node else []
        if node is message:
            return [key for key in keys if key not in STRUCTURAL]
        if node is message.get("context"):
            return [key for key in keys if key not in STRUCTURAL_CONTEXT]
        return keys
    if segment == "*":
        return list(range(len(node)))
    if segment.isascii() and segment.isdigit() and int(segment) < len(node):
        return [int(segment)]
    return []
