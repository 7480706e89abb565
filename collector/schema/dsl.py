"""The spec DSL: field specs (YAML) → draft 2020-12 schema fragments, shared by the base spec
(schema/spec.py) and tracking plans (schema/plans.py). A leaf: it imports nothing of the collector.

Every rule has one of two levels (see spec/common.yaml, "Levels"):
- contract: what makes a message a message.
- quality: the keywords a field spec lists under `quality:` (reserved types, formats, our
  lengths); a message that breaks only quality rules is stored and flagged, never dropped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID_BASE = "https://schemas.event-collector.dev/spec/"

# DSL type → JSON Schema fragment. `date` stays an annotation (format is not asserted):
# timestamps are parsed leniently at enrichment so no event is lost over a clock format.
_TYPES: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "number": {"type": "number"},
    "integer": {"type": "integer"},
    "boolean": {"type": "boolean"},
    "object": {"type": "object"},
    "array": {"type": "array"},
    "any": {},
    "date": {"type": "string", "format": "date-time"},
    "id": {"type": ["string", "integer"]},
}
_PASSTHROUGH = ("enum", "pattern", "minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems")


class SpecError(Exception):
    """The YAML spec is malformed; the message names the file and the field."""


def default_spec_dir() -> Path:
    """spec/ next to the package in a checkout, or the copy bundled into the wheel."""
    if env := os.environ.get("COLLECTOR_SPEC_DIR"):
        return Path(env)
    here = Path(__file__).resolve().parent.parent  # collector/
    for candidate in (here.parent / "spec", here / "_spec"):
        if (candidate / "common.yaml").is_file():
            return candidate
    raise SpecError(f"no spec directory found next to {here}; set COLLECTOR_SPEC_DIR")


LEVELS = ("contract", "full")  # full = contract + quality


class Generator:
    """Turns field specs into schema fragments, collecting the definitions they use.

    `level`: "contract" leaves out every `quality:` block, "full" merges them in.
    `null_optional`: an optional field also accepts null (a message's "null means absent")."""

    def __init__(
        self, definitions: dict[str, dict[str, Any]], level: str = "full", null_optional: bool = False
    ) -> None:
        if level not in LEVELS:
            raise SpecError(f"unknown level {level!r}")
        self.definitions = definitions
        self.level = level
        self.null_optional = null_optional
        self.used: dict[str, dict[str, Any]] = {}

    def at_level(self, spec: dict[str, Any], where: str) -> dict[str, Any]:
        """The field spec as this level sees it."""
        quality = spec.get("quality")
        if quality is None:
            return spec
        if not isinstance(quality, dict):
            raise SpecError(f"{where}.quality: a mapping of the quality-level keywords")
        base = {k: v for k, v in spec.items() if k != "quality"}
        if self.level == "contract":
            return base
        merged = base | quality
        if "fields" in base and "fields" in quality:
            merged["fields"] = dict(base["fields"] or {}) | dict(quality["fields"] or {})
        return merged

    def field(self, spec: dict[str, Any], where: str) -> dict[str, Any]:
        spec = self.at_level(spec, where)
        if "use" in spec:
            name = spec["use"]
            if name not in self.definitions:
                raise SpecError(f"{where}: unknown definition {name!r}")
            if self.null_optional and spec.get("required"):
                raise SpecError(f"{where}: a message's definitions admit null (null means absent); inline it")
            if name not in self.used:
                self.used[name] = {}  # placeholder first: definitions may refer to each other
                definition = self.definitions[name]
                if self.null_optional:  # every use of it is optional: null inside, so errors point deep
                    definition = definition | {"nullable": True}
                self.used[name] = self.field(definition, f"definitions.{name}")
            ref: dict[str, Any] = {"$ref": f"#/$defs/{name}"}
            if spec.get("nullable") and not self.null_optional:
                return {"anyOf": [ref, {"type": "null"}]}
            return ref
        schema: dict[str, Any] = {}
        if "description" in spec:
            schema["description"] = " ".join(str(spec["description"]).split())
        types = spec.get("type", "any")
        types = types if isinstance(types, list) else [types]
        json_types: list[str] = []
        for name in types:
            if name not in _TYPES:
                raise SpecError(f"{where}: unknown type {name!r}")
            fragment = _TYPES[name]
            if "type" in fragment:
                fragment_types = fragment["type"]
                json_types += fragment_types if isinstance(fragment_types, list) else [fragment_types]
            if "format" in fragment:
                schema["format"] = fragment["format"]
        if spec.get("nullable") and json_types:  # a field of any type admits null already
            json_types.append("null")
        if json_types:
            unique = list(dict.fromkeys(json_types))
            schema["type"] = unique[0] if len(unique) == 1 else unique
        for key in _PASSTHROUGH:
            if key in spec:
                schema[key] = spec[key]
        if spec.get("nullable") and "enum" in schema and None not in schema["enum"]:
            schema["enum"] = [*schema["enum"], None]  # enum is checked on its own: null must be listed
        if "fields" in spec:
            schema.update(self.object_body(spec["fields"], where, spec.get("additionalFields", True)))
        if "items" in spec:
            schema["items"] = self.field(spec["items"], f"{where}[]")
        return schema

    def object_body(self, fields: dict[str, Any], where: str, additional: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {"properties": {}}
        required = []
        for name, field_spec in (fields or {}).items():
            if not isinstance(field_spec, dict):
                raise SpecError(f"{where}.{name}: a field spec is a mapping")
            if field_spec.get("required"):
                required.append(name)
            elif self.null_optional and not field_spec.get("nullable"):
                field_spec = field_spec | {"nullable": True}
            body["properties"][name] = self.field(field_spec, f"{where}.{name}")
        if required:
            body["required"] = required
        if not additional:
            body["additionalProperties"] = False
        return body

    def finish(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self.used:
            schema["$defs"] = dict(sorted(self.used.items()))
        return schema


def pointer(path: Any) -> str:
    """RFC 6901 JSON pointer from a jsonschema-rs path."""
    parts = [str(part).replace("~", "~0").replace("/", "~1") for part in path]
    return "/" + "/".join(parts) if parts else ""
