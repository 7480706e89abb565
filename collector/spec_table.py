"""README's table "what is rejected, what is repaired, what is flagged", generated from spec/ and the
repair tables, so the documentation cannot drift from what the server does (a test compares them).
`collector spec table` prints it; `collector spec table --write README.md` rewrites it in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from collector.paths import CALL_TYPES
from collector.pipeline.enrichment import ENRICHMENT_REPAIRS
from collector.pipeline.repair import REPAIRS
from collector.schema.spec import Spec

BEGIN, END = "<!-- levels-table -->", "<!-- /levels-table -->"

# Rejected before any schema is consulted (pipeline/intake.py, pipeline/ingest.split).
_INTAKE_RULES = [
    ("the body", "one JSON object (else `400 invalid_json`), at most `maxRequestBytes` after decompression (`413`)"),
    ("a single event", "at most `maxEventBytes` (`413`; a batch item over it is one invalid item)"),
    ("`batch`", "an array of at most `maxBatchEvents` items (`413`)"),
    ("`type`", "the call the path names (`/v1/track` takes only track); on batch items, one of the six calls"),
    ("a message", "nested at most 255 levels deep"),
]
_WORDS = {
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "a boolean",
    "object": "an object",
    "array": "an array",
    "date": "an ISO-8601 date-time string",
    "id": "a string or an integer",
}


def _type_text(types: Any) -> str:
    names: list[str] = types if isinstance(types, list) else [types]
    return " or ".join(_WORDS.get(name, name) for name in names)


def _rules(spec: dict[str, Any]) -> list[str]:
    """What one level of one field spec asks, in words."""
    found = []
    if spec.get("required"):
        found.append("required")
    if "type" in spec and spec["type"] != "any":
        found.append(_type_text(spec["type"]))
    if "enum" in spec:
        found.append("one of " + ", ".join(f"`{v}`" for v in spec["enum"]))
    if "pattern" in spec:
        found.append(f"matches `{spec['pattern']}`")
    if spec.get("minLength") == 1:
        found.append("not empty")
    elif "minLength" in spec:
        found.append(f"at least {spec['minLength']} characters")
    if "maxLength" in spec:
        found.append(f"at most {spec['maxLength']} characters")
    if "minItems" in spec:
        found.append(f"at least {spec['minItems']} item(s)")
    return found


def _resolve(spec: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """A field spec with its `use:` replaced by the definition (whose own quality block it keeps)."""
    if "use" not in spec:
        return spec
    rest = {k: v for k, v in spec.items() if k != "use"}
    used: dict[str, Any] = definitions[spec["use"]]
    return used | rest


def _levels(spec: dict[str, Any], definitions: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(contract part, quality part) of a field spec, definitions resolved."""
    spec = _resolve(spec, definitions)
    own = {k: v for k, v in spec.items() if k != "quality"}
    return own, _resolve(spec.get("quality") or {}, definitions)


def _walk(
    fields: dict[str, Any], prefix: str, definitions: dict[str, Any], level: str, rows: list[tuple[str, str]]
) -> None:
    """(field, rule) rows of one level. Inside a quality block every keyword is a quality rule
    (`level` "quality-only" there)."""
    for name, field in (fields or {}).items():
        path = f"{prefix}{name}"
        own, quality = _levels(field, definitions)
        if level == "quality-only":
            whole = own | quality
            rules, children = _rules(whole), [(whole.get("fields"), "quality-only")]
            children.append((quality.get("fields"), "quality-only"))
        else:
            rules = _rules(own if level == "contract" else quality)
            children = [(own.get("fields"), level)]
            if level == "quality":
                children.append((quality.get("fields"), "quality-only"))
        if rules:
            rows.append((path, ", ".join(rules)))
        for nested, nested_level in children:
            if nested:
                _walk(nested, f"{path}.", definitions, nested_level, rows)


def level_rows(spec: Spec, level: str) -> list[tuple[str, str, str]]:
    """(calls, field, rule) rows, a field common to every call listed once as "all"."""
    by_rule: dict[tuple[str, str], list[str]] = {}
    for call in CALL_TYPES:
        rows: list[tuple[str, str]] = []
        fields = dict(spec.common["fields"]) | dict(spec.calls[call].get("fields") or {})
        fields.pop("type")  # implied by the path, or checked against the known types (batch)
        _walk(fields, "", spec.definitions, level, rows)
        for row in rows:
            by_rule.setdefault(row, []).append(call)
    grouped: dict[tuple[str, str, str], list[str]] = {}  # (calls, parent, rule) → leaf names
    for (path, rule), calls in by_rule.items():
        where = "all" if len(calls) == len(CALL_TYPES) else ", ".join(calls)
        parent, _, leaf = path.rpartition(".")
        grouped.setdefault((where, parent, rule), []).append(leaf)
    table = []
    for (where, parent, rule), leaves in grouped.items():
        leaves.sort()
        names = leaves[0] if len(leaves) == 1 else "{" + ", ".join(leaves) + "}"
        table.append((where, f"{parent}.{names}" if parent else names, rule))
    return sorted(table, key=lambda row: (row[0] != "all", row[0], row[1]))


def render(spec: Spec) -> str:
    lines = [
        BEGIN,
        "",
        "**Rejected** (the contract: not a message at all; per source `invalidMessages`: 400 or quarantine):",
        "",
    ]
    lines += ["| calls | field | must be |", "| --- | --- | --- |"]
    for field, rule in _INTAKE_RULES:
        lines.append(f"| all | {field} | {rule} |")
    lines.append(
        "| all | `userId` / `anonymousId` | at least one of them, a string or an integer (null counts as absent) |"
    )
    lines += [f"| {calls} | `{field}` | {rule} |" for calls, field, rule in level_rows(spec, "contract")]
    lines += [
        "",
        "**Flagged** (quality: stored as sent, each problem in `context.protocols.violations` with its `rule`,"
        " counted in `collector_quality_violations_total`; per source `qualityEnforcement: quarantine | reject`"
        " escalates):",
        "",
        "| calls | field | should be |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {calls} | `{field}` | {rule} |" for calls, field, rule in level_rows(spec, "quality")]
    lines += ["", "**Repaired** (stored mended, recorded as a violation of type `Repaired`):", ""]
    lines += ["| rule | what arrives | what is stored |", "| --- | --- | --- |"]
    for keyword, (arrives, stored) in (REPAIRS | ENRICHMENT_REPAIRS).items():
        lines.append(f"| `{keyword}` | {arrives} | {stored} |")
    lines += ["", END]
    return "\n".join(lines)


def write_readme(readme: Path, spec: Spec) -> bool:
    """Rewrite the marked section; True when it changed."""
    text = readme.read_text(encoding="utf-8")
    before, _, rest = text.partition(BEGIN)
    _, _, after = rest.partition(END)
    updated = before + render(spec) + after
    if updated != text:
        readme.write_text(updated, encoding="utf-8")
    return updated != text
