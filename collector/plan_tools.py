"""`collector plan lint | check | infer | diff`: tracking plans offline.

lint   plan files valid, names unique, types known, schemas compile
check  recorded events (JSON lines) against the base spec and a plan: violations by event and field
infer  a draft plan from recorded traffic, so a site can start from what it already sends
diff   breaking vs compatible changes between two versions of a plan
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from collector.pipeline.plans import check
from collector.pipeline.validation import Validators
from collector.schema.dsl import default_spec_dir as spec_dir
from collector.schema.plans import Plan, compile_plan, load_plans, read_yaml
from collector.schema.spec import load, load_schemas


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """Messages from a JSON-lines file: bare messages, batch envelopes, or read-back items."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
        if isinstance(item, dict) and isinstance(item.get("batch"), list):
            yield from (m for m in item["batch"] if isinstance(m, dict))
        elif isinstance(item, dict) and isinstance(item.get("event"), dict):
            yield item["event"]  # a read-back item {"position", ..., "event": {...}}
        elif isinstance(item, dict):
            yield item


def lint(plans_dir: Path) -> list[str]:
    try:
        plans, _schemas = load_plans(plans_dir)
    except Exception as exc:  # every failure is a finding, with the file named
        return [str(exc)]
    if not plans:
        return [f"no plan files (*.yaml) in {plans_dir}"]
    return []


@dataclass
class CheckReport:
    events: int
    rows: list[tuple[str, str, str, int]]  # (event, field, violation type, count)

    def table(self) -> str:
        if not self.rows:
            return f"{self.events} events checked, no violations"
        width = max(len(r[0]) for r in self.rows)
        field_width = max(len(r[1]) for r in self.rows)
        lines = [f"{'event':<{width}}  {'field':<{field_width}}  {'violation':<18}  count"]
        lines += [f"{e:<{width}}  {f:<{field_width}}  {t:<18}  {c}" for e, f, t, c in self.rows]
        total = sum(r[3] for r in self.rows)
        lines.append(f"{self.events} events checked, {total} violations")
        return "\n".join(lines)


def check_file(path: Path, plan: Plan) -> CheckReport:
    validators = Validators(load_schemas())
    tally: Counter[tuple[str, str, str]] = Counter()
    count = 0
    for message in read_events(path):
        count += 1
        name = _event_label(message)
        errors = validators.errors(message)  # the contract: the collector would not store it
        quality = [] if errors else validators.check(message)[1]  # stored, but flagged
        for label, found in (("Spec: ", errors or []), ("Quality: ", quality)):
            for error in found:
                field = error["pointer"].lstrip("/").replace("/", ".") or "(message)"
                tally[(name, field, label + error["keyword"])] += 1
        if errors:
            continue
        for violation in check(plan, message).violations:
            tally[(name, violation["field"], violation["type"])] += 1
    rows = sorted(((e, f, t, c) for (e, f, t), c in tally.items()), key=lambda r: (r[0], r[1], r[2]))
    return CheckReport(count, rows)


def _event_label(message: dict[str, Any]) -> str:
    kind = message.get("type")
    if kind == "track":
        return str(message.get("event"))
    return f"({kind})"


# --- infer -------------------------------------------------------------------------------------------


class _Shape:
    """What values were seen at one place: their DSL types, and for objects/arrays, their parts."""

    def __init__(self) -> None:
        self.types: Counter[str] = Counter()
        self.seen = 0
        self.fields: dict[str, _Shape] = defaultdict(_Shape)
        self.objects = 0
        self.items: _Shape | None = None

    def add(self, value: Any) -> None:
        self.seen += 1
        if value is None:
            self.types["null"] += 1
        elif isinstance(value, bool):
            self.types["boolean"] += 1
        elif isinstance(value, int | float):
            self.types["number"] += 1  # never "integer": one 19.99 later would be a violation
        elif isinstance(value, str):
            self.types["string"] += 1
        elif isinstance(value, dict):
            self.types["object"] += 1
            self.objects += 1
            for key, inner in value.items():
                self.fields[key].add(inner)
        elif isinstance(value, list):
            self.types["array"] += 1
            self.items = self.items or _Shape()
            for inner in value:
                self.items.add(inner)

    def spec(self, parent_objects: int | None = None) -> dict[str, Any]:
        kinds = [t for t in ("string", "number", "boolean", "object", "array") if self.types[t]]
        out: dict[str, Any] = {}
        if len(kinds) == 1:
            out["type"] = kinds[0]
        elif kinds:
            out["type"] = kinds
        else:
            out["type"] = "any"
        if self.types["null"]:
            out["nullable"] = True
        if parent_objects is not None and self.seen == parent_objects and not self.types["null"]:
            out["required"] = True
        if self.fields and "object" in kinds:
            out["fields"] = {key: shape.spec(self.objects) for key, shape in sorted(self.fields.items())}
        if self.items is not None and self.items.seen and "array" in kinds:
            out["items"] = self.items.spec()
        return out


def infer(paths: Iterable[Path], name: str) -> dict[str, Any]:
    """A plan that accepts every observed message: observed types, keys present in every event required."""
    events: dict[str, _Shape] = defaultdict(_Shape)
    traits = {"identify": _Shape(), "group": _Shape()}
    for path in paths:
        for message in read_events(path):
            kind = message.get("type")
            if kind == "track" and isinstance(message.get("event"), str):
                events[message["event"]].add(message.get("properties") or {})
            elif kind in traits:
                traits[kind].add(message.get("traits") or {})
    plan: dict[str, Any] = {
        "plan": name,
        "description": "Inferred from recorded traffic; review before enforcing.",
        "unplannedEvents": "allow",
        "unplannedProperties": "allow",
        "events": {},
    }
    for event, shape in sorted(events.items()):
        plan["events"][event] = {"properties": {k: s.spec(shape.objects) for k, s in sorted(shape.fields.items())}}
    for call, shape in traits.items():
        if shape.seen:
            plan[call] = {"traits": {k: s.spec(shape.objects) for k, s in sorted(shape.fields.items())}}
    compile_plan(plan, f"inferred plan {name}", load(spec_dir()).definitions)  # it must be a valid plan
    return plan


def dump_plan(plan: dict[str, Any]) -> str:
    return yaml.safe_dump(plan, sort_keys=False, allow_unicode=True, width=120)


# --- diff --------------------------------------------------------------------------------------------

_CONSTRAINTS = ("enum", "pattern", "minLength", "maxLength", "minimum", "maximum", "minItems", "maxItems")


def _types(spec: dict[str, Any]) -> set[str]:
    raw = spec.get("type", "any")
    types = set(raw if isinstance(raw, list) else [raw])
    if spec.get("nullable"):
        types.add("null")
    return types


def _compare_fields(
    where: str, old: dict[str, Any], new: dict[str, Any], unplanned: str, out: list[tuple[str, str]]
) -> None:
    for key in sorted(set(old) | set(new)):
        at = f"{where}.{key}"
        before, after = old.get(key), new.get(key)
        if before is None:
            kind = "breaking" if (after or {}).get("required") else "compatible"
            out.append((kind, f"{at}: added" + (" as required" if kind == "breaking" else "")))
            continue
        if after is None:
            if before.get("required"):
                out.append(("breaking", f"{at}: required property removed (consumers relied on it)"))
            elif unplanned == "allow":
                out.append(("compatible", f"{at}: optional property removed (still accepted as unplanned)"))
            else:
                out.append(("breaking", f"{at}: property removed (now an unplanned property: {unplanned})"))
            continue
        if bool(before.get("required")) != bool(after.get("required")):
            out.append(("breaking", f"{at}: " + ("became required" if after.get("required") else "no longer required")))
        old_types, new_types = _types(before), _types(after)
        if old_types != new_types:
            widened = old_types <= new_types or "any" in new_types
            out.append(
                ("compatible" if widened else "breaking", f"{at}: type {sorted(old_types)} → {sorted(new_types)}")
            )
        for constraint in _CONSTRAINTS:
            if before.get(constraint) != after.get(constraint):
                widened = (
                    constraint == "enum"
                    and after.get("enum") is not None
                    and set(before.get("enum") or []) <= set(after["enum"])
                ) or after.get(constraint) is None
                out.append(
                    (
                        "compatible" if widened else "breaking",
                        f"{at}: {constraint} {before.get(constraint)!r} → {after.get(constraint)!r}",
                    )
                )
        if before.get("fields") or after.get("fields"):
            _compare_fields(at, before.get("fields") or {}, after.get("fields") or {}, unplanned, out)


def diff(old_path: Path, new_path: Path) -> list[tuple[str, str]]:
    """(breaking | compatible, description) for each change from OLD to NEW."""
    old, new = read_yaml(old_path), read_yaml(new_path)
    definitions = load(spec_dir()).definitions
    compile_plan(old, old_path.name, definitions)
    compile_plan(new, new_path.name, definitions)
    out: list[tuple[str, str]] = []
    unplanned = new.get("unplannedProperties", "allow")
    if old.get("unplannedEvents", "allow") != new.get("unplannedEvents", "allow"):
        tighter = new.get("unplannedEvents") == "violation"
        out.append(("breaking" if tighter else "compatible", f"unplannedEvents → {new.get('unplannedEvents')}"))
    if old.get("unplannedProperties", "allow") != unplanned:
        tighter = unplanned != "allow"
        out.append(("breaking" if tighter else "compatible", f"unplannedProperties → {unplanned}"))
    old_events, new_events = old.get("events") or {}, new.get("events") or {}
    for name in sorted(set(old_events) | set(new_events)):
        if name not in new_events:
            out.append(("breaking", f"events.{name}: event removed"))
        elif name not in old_events:
            out.append(("compatible", f"events.{name}: event added"))
        else:
            before_versions = _versions(old_events[name])
            after_versions = _versions(new_events[name])
            for version in sorted(set(before_versions) | set(after_versions)):
                at = f"events.{name}" + (f".v{version}" if len(after_versions) > 1 or len(before_versions) > 1 else "")
                if version not in after_versions:
                    out.append(("breaking", f"{at}: version removed"))
                elif version not in before_versions:
                    out.append(("compatible", f"{at}: version added"))
                else:
                    _compare_fields(
                        f"{at}.properties",
                        before_versions[version].get("properties") or {},
                        after_versions[version].get("properties") or {},
                        unplanned,
                        out,
                    )
                    _compare_forbidden(at, before_versions[version], after_versions[version], out)
    for call in ("identify", "group"):
        _compare_fields(
            f"{call}.traits",
            (old.get(call) or {}).get("traits") or {},
            (new.get(call) or {}).get("traits") or {},
            unplanned,
            out,
        )
    return out


def _versions(event: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return dict(event.get("versions") or {1: event or {}})


def _compare_forbidden(at: str, before: dict[str, Any], after: dict[str, Any], out: list[tuple[str, str]]) -> None:
    added = set(after.get("forbidden") or []) - set(before.get("forbidden") or [])
    removed = set(before.get("forbidden") or []) - set(after.get("forbidden") or [])
    out += [("breaking", f"{at}.properties.{key}: now forbidden") for key in sorted(added)]
    out += [("compatible", f"{at}.properties.{key}: no longer forbidden") for key in sorted(removed)]
