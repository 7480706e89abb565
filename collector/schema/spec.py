"""The base spec: spec/*.yaml → the call, batch and profile schemas (draft 2020-12).

The YAML is the source of truth; the generated schemas are committed (spec/schemas/) so that
other implementations and the conformance kit can use them without running this code:
`spec/schemas/contract/<type>.json` holds the contract level alone, `spec/schemas/<type>.json`
both levels (schema/dsl.py). schema/build.py writes and checks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from collector.paths import CALL_TYPES
from collector.schema.dsl import DIALECT, SCHEMA_ID_BASE, Generator, SpecError, default_spec_dir


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
            continue  # tracking plans: collector/schema/plans.py
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
    generator = Generator(spec.definitions, level, null_optional=True)
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
    generator = Generator(spec.definitions, level, null_optional=True)
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
            generator = Generator(spec.definitions)
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


def load_schemas(spec_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """The committed schemas, as the server uses them: `<name>` (both levels) and `contract/<name>`."""
    out_dir = (spec_dir or default_spec_dir()) / "schemas"
    schemas = {path.stem: orjson.loads(path.read_bytes()) for path in sorted(out_dir.glob("*.json"))}
    for path in sorted((out_dir / "contract").glob("*.json")):
        schemas[f"contract/{path.stem}"] = orjson.loads(path.read_bytes())
    return schemas
