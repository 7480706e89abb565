"""JSON that keeps every number exact: what orjson parses and encodes, plus integers of any size.

orjson parses an integer beyond 64 bits as a float (an id of 2^64 + 1 would be stored as 2^64)
and refuses to encode one. A body holding a run of 19 or more digits (the shortest integer that
can fall outside the 64-bit range) is parsed by the standard library instead, whose integers are
exact; encoding falls back to orjson.Fragment for the rare big integer. Finding such a run costs
one `bytes.translate` and one substring search (~0.8 us for a 1 KB event), far less than a regex.
Imports nothing of the collector: storage reads stored bodies with it too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

_DIGITS_AS_NINES = bytes(0x39 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_DIGIT_RUN = b"9" * 19
_INT64 = range(-(2**63), 2**64)  # what orjson itself encodes (i64 and u64)


def has_long_digit_run(body: bytes | str) -> bool:
    if isinstance(body, str):  # PostgreSQL hands stored bodies back as text
        body = body.encode("utf-8", "surrogatepass")
    return _LONG_DIGIT_RUN in body.translate(_DIGITS_AS_NINES)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def exact_loads(body: bytes | str, lenient: bool = False) -> Any:
    """The standard library's parse: integers exact. `lenient` also takes NaN, Infinity and
    -Infinity (which Python's json.dumps writes) and numbers beyond a double (as infinities);
    lone surrogate escapes are always taken. The caller repairs what it took (repair.py).
    ValueError for anything that is not JSON (UnicodeDecodeError and JSONDecodeError are ValueErrors)."""
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    try:
        if lenient:
            return json.loads(text)
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def loads(body: bytes | str) -> Any:
    """orjson's parse, or the exact one when the body may hold an integer beyond 64 bits."""
    if has_long_digit_run(body):
        return exact_loads(body)
    return orjson.loads(body)


def _exact_integers(value: Any) -> Any:
    """A copy in which every integer orjson cannot encode is a Fragment of its digits."""
    if isinstance(value, dict):
        return {key: _exact_integers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_exact_integers(item) for item in value]
    if type(value) is int and value not in _INT64:
        return orjson.Fragment(str(value))
    return value


def dumps(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """orjson.dumps, with integers of any size. orjson.JSONEncodeError for what JSON cannot hold
    (nesting past orjson's 255 levels among it)."""
    try:
        return orjson.dumps(value, default=default)
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc):
            raise
    try:
        return orjson.dumps(_exact_integers(value), default=default)
    except RecursionError:
        raise orjson.JSONEncodeError("nested too deeply") from None
