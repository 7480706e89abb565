"""The JSON Schema of the config file, built from the SETTINGS table.

collector/config.schema.json is this module's `build()`, committed for editors and for the
start-up check (config_check.py); a test keeps it in step, and `collector config schema >
collector/config.schema.json` regenerates it.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from collector.settings import (
    INVALID_MESSAGE_MODES,
    IP_POLICIES,
    KEY_KINDS,
    PLAN_ENFORCEMENTS,
    QUALITY_ENFORCEMENTS,
    SETTINGS,
    SIGNAL_POLICIES,
    WHEN_MISSING,
)

# YAML reads unquoted digits as integers; settings.load() turns ids, names and keys into text.
_TEXT = {"type": ["string", "integer"]}
_LIST = {"type": ["array", "string", "null"], "items": _TEXT, "description": "A list, or one comma-separated string."}
_SPECIAL: dict[str, dict[str, Any]] = {
    "admin_tokens": _LIST,
    "trusted_proxies": _LIST,
    "allowed_hosts": _LIST,
    "ingest_prefixes": _LIST,
    "rate_limit": {"type": ["string", "number", "null"]},
    "receipt_retention": {"type": ["string", "integer", "null"]},
    "invalid_messages": {"enum": [*INVALID_MESSAGE_MODES, None]},
}


def camel(name: str) -> str:
    return re.sub(r"_(\w)", lambda m: m.group(1).upper(), name)


def _setting_schema(name: str, default: Any, help: str) -> dict[str, Any]:
    if name in _SPECIAL:
        schema = dict(_SPECIAL[name])
    elif isinstance(default, float):
        schema = {"type": ["number", "string", "null"], "exclusiveMinimum": 0, "pattern": "^[0-9]*[.]?[0-9]+$"}
    elif isinstance(default, int):
        schema = {"type": ["integer", "string", "null"], "minimum": 1, "pattern": "^[0-9]+$"}
    else:
        schema = {"type": ["string", "null"]}
    return schema | {"description": help, "default": default}


_REDACT_ACTIONS = ["drop", "hash", "mask"]
_DETECTORS = ["email", "phone", "card", "iban", "ipv4"]


def privacy_schema() -> dict[str, Any]:
    """The `privacy` block of a workspace (a source may override any key but hashSecret)."""
    rule = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "path": {"type": "string", "minLength": 1, "description": "Dotted path; `*` matches any key or index."},
            "detect": {"enum": _DETECTORS},
            "action": {"enum": _REDACT_ACTIONS},
        },
        "required": ["action"],
        "oneOf": [{"required": ["path"]}, {"required": ["detect"]}],
    }
    return {
        "type": ["object", "null"],
        "additionalProperties": False,
        "properties": {
            "ip": {"enum": list(IP_POLICIES), "description": "truncate: IPv4 to /24, IPv6 to /48."},
            "globalPrivacyControl": {"enum": list(SIGNAL_POLICIES), "description": "For the Sec-GPC: 1 header."},
            "doNotTrack": {"enum": list(SIGNAL_POLICIES), "description": "For the DNT: 1 header."},
            "consent": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "properties": {
                    "require": _LIST | {"description": "Categories context.consent.categoryPreferences must grant."},
                    "whenMissing": {"enum": list(WHEN_MISSING)},
                },
            },
            "redact": {"type": ["array", "null"], "items": rule},
            "retention": {
                "type": ["string", "integer", "null"],
                "description": "90d, 12h, 30m: events and quarantine older than this are deleted.",
            },
            "hashSecret": {"type": "string", "minLength": 16, "description": "Key of `hash` (per workspace)."},
        },
    }


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
            "writeKeys": {
                "type": ["array", "string"],
                "items": {
                    "anyOf": [
                        _TEXT,
                        {
                            "type": "object",
                            "properties": {"key": _TEXT, "kind": {"enum": list(KEY_KINDS)}},
                            "required": ["key", "kind"],
                            "additionalProperties": False,
                        },
                    ]
                },
                "description": "Keys that send to this source (at least one): each a key, or {key, kind} with "
                "kind `browser` (accepted from allowedOrigins) or `server` (refused from web pages).",
            },
            "invalidMessages": {"enum": list(INVALID_MESSAGE_MODES)},
            "allowedOrigins": _LIST | {"description": "Browser origins allowed by CORS (`*` by default)."},
            "rateLimit": {"type": ["string", "number", "null"], "description": "`RATE`, `RATE:BURST` or `off`."},
            "trackingPlan": {"type": ["string", "null"], "description": "Name of a plan in the plans directory."},
            "planEnforcement": {"enum": list(PLAN_ENFORCEMENTS)},
            "qualityEnforcement": {"enum": list(QUALITY_ENFORCEMENTS)},
            "privacy": {"$ref": "#/$defs/privacy"},
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
            "privacy": {"$ref": "#/$defs/privacy"},
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
            "privacy": privacy_schema(),
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
