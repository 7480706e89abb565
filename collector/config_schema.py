"""The JSON Schema of the config file, built from the SETTINGS table, and the check run at start-up.

collector/config.schema.json is this module's `build()`, committed for editors (a test keeps it
in step; `collector config schema > collector/config.schema.json` regenerates it). `problems()`
names each unknown key with its path and the nearest valid name, and each wrong type with its path.
Semantic checks (id formats, duplicate keys, rate syntax) stay in settings.load().
"""

from __future__ import annotations

import difflib
import re
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator, ValidationError

from collector.settings import INVALID_MESSAGE_MODES, PLAN_ENFORCEMENTS, QUALITY_ENFORCEMENTS, SETTINGS

SCHEMA_PATH = Path(__file__).with_name("config.schema.json")

# YAML reads unquoted digits as integers; settings.load() turns ids, names and keys into text.
_TEXT = {"type": ["string", "integer"]}
_LIST = {"type": ["array", "string", "null"], "items": _TEXT, "description": "A list, or one comma-separated string."}
_SPECIAL: dict[str, dict[str, Any]] = {
    "admin_tokens": _LIST,
    "trusted_proxies": _LIST,
    "rate_limit": {"type": ["string", "number", "null"]},
    "invalid_messages": {"enum": [*INVALID_MESSAGE_MODES, None]},
}


def camel(name: str) -> str:
    return re.sub(r"_(\w)", lambda m: m.group(1).upper(), name)


def _setting_schema(name: str, default: Any, help: str) -> dict[str, Any]:
    if name in _SPECIAL:
        schema = dict(_SPECIAL[name])
    elif isinstance(default, int):
        schema = {"type": ["integer", "string", "null"], "minimum": 1, "pattern": "^[0-9]+$"}
    else:
        schema = {"type": ["string", "null"]}
    return schema | {"description": help, "default": default}


def build() -> dict[str, Any]:
    settings = {camel(s.name): _setting_schema(*s) for s in SETTINGS}
    # snake_case names are read too (older configs); camelCase is the documented form.
    snake = {
        s.name: {
            "$ref": f"#/$defs/settings/properties/{camel(s.name)}",
            "description": f"Same as {camel(s.name)}.",
            "deprecated": True,
        }
        for s in SETTINGS
        if s.name != camel(s.name)
    }
    source = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "id": _TEXT | {"description": "Unique across all workspaces (default src_<workspace>_<source>)."},
            "name": _TEXT,
            "writeKeys": _LIST | {"description": "Public keys that send to this source (at least one)."},
            "invalidMessages": {"enum": list(INVALID_MESSAGE_MODES)},
            "allowedOrigins": _LIST | {"description": "Browser origins allowed by CORS (`*` by default)."},
            "rateLimit": {"type": ["string", "number", "null"], "description": "`RATE`, `RATE:BURST` or `off`."},
            "trackingPlan": {"type": ["string", "null"], "description": "Name of a plan in the plans directory."},
            "planEnforcement": {"enum": list(PLAN_ENFORCEMENTS)},
            "qualityEnforcement": {"enum": list(QUALITY_ENFORCEMENTS)},
        },
    }
    workspace = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "description": "ws_ + 16 letters or digits."},
            "name": _TEXT,
            "tokens": _LIST | {"description": "Bearer tokens of the profile API for this workspace."},
            "sources": {"type": ["array", "null"], "items": {"$ref": "#/$defs/source"}},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "collector config file",
        "type": "object",
        "additionalProperties": False,
        "$defs": {
            "settings": {"type": "object", "properties": settings},
            "workspace": workspace,
            "source": source,
        },
        "properties": {
            "workspaces": {"type": ["array", "null"], "items": {"$ref": "#/$defs/workspace"}},
            "limits": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "properties": {name: {"$ref": f"#/$defs/settings/properties/{name}"} for name in settings},
                "description": "Any scalar setting, in camelCase (the top level works too).",
            },
            **{name: {"$ref": f"#/$defs/settings/properties/{name}"} for name in settings},
            **snake,
        },
    }


def dumps(schema: dict[str, Any]) -> str:
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode() + "\n"


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
