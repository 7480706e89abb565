"""The spec stage: YAML files in spec/ → draft 2020-12 JSON Schemas in spec/schemas/.

The YAML is the source of truth; the generated schemas are committed so that other
implementations (and the conformance kit) can use them without running this code.
`check()` reports stale or invalid schemas; a test runs it.

Every rule has one of two levels (see spec/common.yaml, "Levels"):
- contract: what makes a message a message. `spec/schemas/contract/<type>.json` holds only these.
- quality: the keywords a field spec lists under `quality:` (reserved types, formats, our
  lengths). `spec/schemas/<type>.json` holds both levels; a message that breaks only quality
  rules is stored and flagged, never dropped (unless its source says otherwise).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import yaml

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID_BASE = "https://schemas.event-collector.dev/spec/"
CALL_TYPES = ("track", "identify", "page", "screen", "group", "alias")

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
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "spec", here / "_spec"):
        if (candidate / "common.yaml").is_file():
            return candidate
    raise SpecError(f"no spec directory found next to {here}; set COLLECTOR_SPEC_DIR")


@dataclass(frozen=True)
class Spec:
    """The parsed YAML: common fields, call types, the batch envelope and named definitions."""

    common: dict[str, Any]
    calls: dict[str, dict[str, Any]]
    batch: dict[str, Any]
    definitions: dict[str, dict[str, Any]]
    extra: dict[str, dict[str, Any]]  # other documents with `schemas:` (e.g. the profile API)


def load(spec_dir: Path) -> Spec:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(spec_dir.rglob("*.yaml")):
        if "plans" in path.relative_to(spec_dir).parts[:-1]:
            continue  # tracking plans: collector/plans.py
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or "spec" not in doc:
            raise SpecError(f"{path}: a spec file is a mapping with a `spec:` name")
        docs[doc["spec"]] = doc | {"_file": str(path.relative_to(spec_dir))}
    definitions: dict[str, dict[str, Any]] = {}
    for doc in docs.values():
        definitions.update(doc.get("definitions") or {})
    missing = [name for name in ("common", "context", "batch", *CALL_TYPES) if name not in docs]
    if missing:
        raise SpecError(f"spec files missing for: {', '.join(missing)}")
    extra = {name: doc for name, doc in docs.items() if "schemas" in doc}
    return Spec(
        common=docs["common"],
        calls={name: docs[name] for name in CALL_TYPES},
        batch=docs["batch"],
        definitions=definitions,
        extra=extra,
    )


LEVELS = ("contract", "full")  # full = contract + quality


class _Generator:
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


def _identity_rule(identity: Any, where: str) -> dict[str, Any]:
    """`anyOf: [userId, anonymousId]` → at least one of them present and not null."""
    if identity in (None, "none"):
        return {}
    if not isinstance(identity, dict) or "anyOf" not in identity:
        raise SpecError(f"{where}: identity is `none` or a mapping with anyOf")
    branches = [
        {"required": [name], "properties": {name: {"type": ["string", "integer"]}}} for name in identity["anyOf"]
    ]
    return {
        "anyOf": branches,
        "x-errorMessage": {"anyOf": {"message": identity["message"], "field": identity.get("field")}},
    }


def _schema_id(name: str, level: str) -> str:
    return f"{SCHEMA_ID_BASE}{'contract/' if level == 'contract' else ''}{name}.json"


def call_schema(spec: Spec, call: str, level: str = "full") -> dict[str, Any]:
    doc = spec.calls[call]
    generator = _Generator(spec.definitions, level, null_optional=True)
    fields = dict(spec.common["fields"]) | dict(doc.get("fields") or {})
    schema: dict[str, Any] = {
        "$schema": DIALECT,
        "$id": _schema_id(call, level),
        "title": f"Segment {call} message" + (" (contract)" if level == "contract" else ""),
        "description": " ".join(doc["description"].split()),
        "type": "object",
    }
    schema.update(generator.object_body(fields, call))
    schema["properties"]["type"] = {"const": call, "description": f"Always {call!r} for this schema."}
    identity = doc.get("identity", spec.common.get("identity"))
    schema.update(_identity_rule(identity, call))
    return generator.finish(schema)


def batch_schema(spec: Spec, level: str = "full") -> dict[str, Any]:
    generator = _Generator(spec.definitions, level, null_optional=True)
    schema: dict[str, Any] = {
        "$schema": DIALECT,
        "$id": _schema_id("batch", level),
        "title": "Segment batch envelope" + (" (contract)" if level == "contract" else ""),
        "description": " ".join(spec.batch["description"].split()),
        "type": "object",
    }
    schema.update(generator.object_body(spec.batch["fields"], "batch"))
    return generator.finish(schema)


def extra_schemas(spec: Spec) -> dict[str, dict[str, Any]]:
    """Documents with a `schemas:` mapping (name → object field spec), e.g. profile API bodies."""
    out: dict[str, dict[str, Any]] = {}
    for doc in spec.extra.values():
        for name, body in doc["schemas"].items():
            generator = _Generator(spec.definitions)
            schema: dict[str, Any] = {
                "$schema": DIALECT,
                "$id": f"{SCHEMA_ID_BASE}{name}.json",
                "title": body.get("title", name),
                "description": " ".join(str(body.get("description", "")).split()),
            }
            schema.update(generator.field({k: v for k, v in body.items() if k != "title"}, name))
            if not schema.get("description"):
                schema.pop("description", None)
            out[name] = generator.finish(schema)
    return out


def build(spec_dir: Path) -> dict[str, dict[str, Any]]:
    """All generated schemas by file stem, each checked against the 2020-12 meta-schema."""
    spec = load(spec_dir)
    schemas = {call: call_schema(spec, call) for call in CALL_TYPES}
    schemas["batch"] = batch_schema(spec)
    schemas.update({f"contract/{call}": call_schema(spec, call, "contract") for call in CALL_TYPES})
    schemas["contract/batch"] = batch_schema(spec, "contract")
    schemas.update(extra_schemas(spec))
    from collector.plans import load_plans  # plans use this module's generator

    _plans, plan_schemas = load_plans(spec_dir / "plans", spec.definitions)
    schemas.update({f"plans/{name}": schema for name, schema in plan_schemas.items()})
    for name, schema in schemas.items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise SpecError(f"generated schema {name!r} is invalid: {exc.message}") from exc
    return schemas


def render(schema: dict[str, Any]) -> bytes:
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2) + b"\n"


def write(spec_dir: Path) -> list[Path]:
    out_dir = spec_dir / "schemas"
    out_dir.mkdir(exist_ok=True)
    written = []
    schemas = build(spec_dir)
    for name, schema in schemas.items():
        path = out_dir / f"{name}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(render(schema))
        written.append(path)
    for stale in set(out_dir.rglob("*.json")) - set(written):
        stale.unlink()
    return written


def check(spec_dir: Path) -> list[str]:
    """Problems that make the committed schemas differ from what the YAML generates."""
    problems = []
    out_dir = spec_dir / "schemas"
    schemas = build(spec_dir)
    for name, schema in schemas.items():
        path = out_dir / f"{name}.json"
        if not path.is_file():
            problems.append(f"{path} is missing (run `collector spec build`)")
        elif path.read_bytes() != render(schema):
            problems.append(f"{path} is stale (run `collector spec build`)")
    extra: Iterable[Path] = set(out_dir.rglob("*.json")) - {out_dir / f"{n}.json" for n in schemas}
    problems += [f"{path} is not generated by any spec file" for path in sorted(extra)]
    return problems


def load_schemas(spec_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """The committed schemas, as the server uses them: `<name>` (both levels) and `contract/<name>`."""
    out_dir = (spec_dir or default_spec_dir()) / "schemas"
    schemas = {path.stem: orjson.loads(path.read_bytes()) for path in sorted(out_dir.glob("*.json"))}
    for path in sorted((out_dir / "contract").glob("*.json")):
        schemas[f"contract/{path.stem}"] = orjson.loads(path.read_bytes())
    return schemas
