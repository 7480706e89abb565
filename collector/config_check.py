"""The start-up check of a config file against collector/config.schema.json (config_schema.py
builds that file from the SETTINGS table). `problems()` names each unknown key with its path and
the nearest valid name, and each wrong type with its path. Semantic checks (id formats,
duplicate keys, rate syntax) stay in settings.load(). A leaf: settings.py imports it.
"""

from __future__ import annotations

import difflib
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator, ValidationError

SCHEMA_PATH = Path(__file__).with_name("config.schema.json")


@cache
def validator() -> Draft202012Validator:
    return Draft202012Validator(orjson.loads(SCHEMA_PATH.read_bytes()))


def problems(doc: Any) -> list[str]:
    """One sentence per problem, each starting with the path of the key (`workspaces[0].name`)."""
    found: list[str] = []
    for error in sorted(validator().iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]):
        found += _sentences(error)
    return found


def path_text(path: Any) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _sentences(error: ValidationError) -> list[str]:
    where = path_text(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(error.schema.get("properties", {}))
        sentences = []
        for key in sorted(set(error.instance) - set(known), key=str):
            near = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f"did you mean {near[0]}?" if near else f"valid keys: {', '.join(known)}"
            sentences.append(f"{path_text([*error.absolute_path, str(key)])}: unknown key; {hint}")
        return sentences
    if error.validator == "type":
        expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        # Integer settings also take digits as text (as the env does); the message names the intent.
        shown = [name for name in expected if name != "null" and not (name == "string" and "integer" in expected)]
        names = [_TYPE_NAMES.get(name, name) for name in shown]
        return [f"{where or 'the config file'}: must be {' or '.join(names)}, got {_kind(error.instance)}"]
    if error.validator == "pattern" and error.validator_value == "^[0-9]+$":
        return [f"{where}: must be an integer, got {error.instance!r}"]
    if error.validator == "enum":
        allowed = ", ".join(str(v) for v in error.validator_value if v is not None)
        return [f"{where}: must be one of {allowed}, got {error.instance!r}"]
    return [f"{where or 'the config file'}: {error.message}"]


_TYPE_NAMES = {
    "array": "a list",
    "object": "a mapping",
    "string": "text",
    "integer": "an integer",
    "number": "a number",
}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"
