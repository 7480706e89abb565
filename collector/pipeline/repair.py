"""The repair stage: what a real client sends that storage cannot hold, made storable and recorded.

Each repair returns problems in the validation stage's form (pointer, keyword, message), with
`keyword` naming the repair; the pipeline records them as quality violations, so nothing is
silent. Only requests that need it pay for the walk: intake tells which (`Parsed.needs_scrub`).

README's "What is rejected, repaired and flagged" lists them (from REPAIRS below).
"""

from __future__ import annotations

import math
import re
from typing import Any

from collector.pipeline.records import Problem
from collector.pipeline.validation import pointer

REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# keyword → (what arrives, what is stored): README's table is generated from this.
REPAIRS = {
    "loneSurrogate": (
        "a lone surrogate escape such as `\\ud83d` (a title cut mid-emoji by JSON.stringify)",
        "U+FFFD in its place, in that item only",
    ),
    "nulCharacter": ("`\\u0000` in a string or key (PostgreSQL text cannot hold it)", "U+FFFD, on every backend"),
    "nonFiniteNumber": (
        "`NaN`, `Infinity`, `-Infinity` (Python's json.dumps) or a number beyond a double (`1e400`)",
        "null",
    ),
}
SCRUB_KEYWORDS = frozenset(REPAIRS)
_REPAIRED = {
    "loneSurrogate": "a lone surrogate escape was replaced by U+FFFD",
    "nulCharacter": "a NUL character (\\u0000) was replaced by U+FFFD",
    "nonFiniteNumber": "a number JSON cannot hold (NaN, Infinity, or beyond a double) was replaced by null",
}


def _clean(text: str, at: list[Any], problems: list[Problem], is_key: bool = False) -> str:
    """`text` mended; `at` is its path (a key's own path ends in the key, so it is mended too)."""
    if not _UNSTORABLE.search(text):
        return text
    cleaned = _UNSTORABLE.sub(REPLACEMENT, text)
    where = [*at[:-1], cleaned] if is_key else at
    if "\x00" in text:
        problems.append(_problem(where, "nulCharacter"))
    if any("\ud800" <= char <= "\udfff" for char in text):
        problems.append(_problem(where, "loneSurrogate"))
    return cleaned


def _problem(at: list[Any], keyword: str) -> Problem:
    return Problem(pointer=pointer(at), keyword=keyword, message=_REPAIRED[keyword])


def scrub(value: Any) -> tuple[Any, list[Problem]]:
    """(the value with every repair made, the problems). Containers are repaired in place;
    a top-level string or number comes back repaired. Iterative: any depth the parser took."""
    problems: list[Problem] = []
    holder = [value]
    stack: list[tuple[Any, list[Any]]] = [(holder, [])]
    while stack:
        node, at = stack.pop()
        if isinstance(node, dict):
            if any(isinstance(key, str) and _UNSTORABLE.search(key) for key in node):
                items = [(_clean(key, [*at, key], problems, is_key=True), item) for key, item in node.items()]
                node.clear()
                node.update(items)
            entries: Any = node.items()
        else:
            entries = enumerate(node)
        for key, item in list(entries):
            where = at if node is holder else [*at, key]
            if isinstance(item, str):
                cleaned = _clean(item, where, problems)
                if cleaned is not item:
                    node[key] = cleaned
            elif isinstance(item, float) and not math.isfinite(item):
                node[key] = None
                problems.append(_problem(where, "nonFiniteNumber"))
            elif isinstance(item, dict | list):
                stack.append((item, where))
    problems.sort(key=lambda problem: problem["pointer"])
    return holder[0], problems
