"""Tracking plans at run time: each message checked against its source's plan (schema/plans.py
compiles them), violations recorded, omitted or enforced; and the registry that hot-reloads the
plan files."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.pipeline.records import Indexed, Problem, Rejected
from collector.schema.dsl import SpecError, default_spec_dir, pointer
from collector.schema.plans import VIOLATION_TYPES, Plan, Rule, load_plans
from collector.schema.spec import load as load_spec

log = logging.getLogger("collector.plans")

# --- enforcement ------------------------------------------------------------------------------------


@dataclass
class Verdict:
    violations: list[dict[str, Any]]  # Segment form: {type, field, description}
    errors: list[Problem]  # collector form: {pointer, keyword, message, violation}
    omitted: list[str]


def check(plan: Plan, message: dict[str, Any]) -> Verdict:
    """What the plan says of one message that already passed the base spec."""
    violations: list[dict[str, Any]] = []
    errors: list[Problem] = []
    omitted: list[str] = []
    rule, _version = plan.rule_for(message)
    kind = message.get("type")
    if rule is None and kind == "track" and plan.unplanned_events == "violation":
        event = message.get("event")
        _add(violations, errors, "Unplanned Event", "/event", "event", f"event {event!r} is not in plan {plan.name}")
    for current in (rule, plan.context):
        if current is None or current.validator.is_valid(message):
            continue
        for error in current.validator.iter_errors(message):
            keyword = str(error.schema_path[-1]) if error.schema_path else ""
            path = list(error.instance_path)
            if keyword == "required":
                path.append(error.kind.property)
            if keyword == "additionalProperties":  # one violation per unplanned key, so each can be omitted
                for key in _extra_keys(message, current):
                    at = pointer([*path, key])
                    _add(violations, errors, "Unplanned Property", at, keyword, f"{key} is not in plan {plan.name}")
                continue
            text = f"{path[-1]} is forbidden by plan {plan.name}" if keyword == "not" else error.message
            _add(violations, errors, VIOLATION_TYPES.get(keyword, "Invalid Value"), pointer(path), keyword, text)
    if rule is not None and rule.payload_field and plan.unplanned_properties == "omit":
        payload = message.get(rule.payload_field)
        if isinstance(payload, dict):
            for key in sorted(set(payload) - rule.planned_keys):
                omitted.append(f"{rule.payload_field}.{key}")
    return Verdict(violations, errors, omitted)


def _extra_keys(message: dict[str, Any], rule: Rule) -> list[str]:
    payload = message.get(rule.payload_field or "")
    return sorted(set(payload) - rule.planned_keys) if isinstance(payload, dict) else []


def _add(violations: list[dict[str, Any]], errors: list[Problem], kind: str, at: str, keyword: str, text: str) -> None:
    violations.append({"type": kind, "field": at.lstrip("/").replace("/", "."), "description": text})
    errors.append(Problem(pointer=at, keyword=keyword, message=text, violation=kind))


def apply_omissions(message: dict[str, Any], verdict: Verdict) -> None:
    """Drop the top-level property/trait (or context key) each fixable violation points into."""
    for violation in verdict.violations:
        parts = violation["field"].split(".")
        if violation["type"] not in ("Required", "Unplanned Event") and len(parts) >= 2:
            verdict.omitted.append(".".join(parts[:2]))  # Required: nothing to drop; the event keeps the record
    verdict.omitted = sorted(set(verdict.omitted))
    drop(message, verdict.omitted)


def drop(message: dict[str, Any], dotted_keys: list[str]) -> None:
    for dotted in dotted_keys:
        container_name, _, key = dotted.partition(".")
        container = message.get(container_name)
        if isinstance(container, dict):
            container.pop(key, None)


def annotate(message: dict[str, Any], plan: Plan, verdict: Verdict) -> None:
    """Record the plan's verdict in context.protocols, as Segment Protocols does."""
    context = message.get("context")
    if not isinstance(context, dict):
        context = message["context"] = {}
    protocols = context.get("protocols")
    protocols = dict(protocols) if isinstance(protocols, dict) else {}
    protocols["trackingPlan"] = plan.name
    if verdict.violations:
        protocols["violations"] = verdict.violations
    if verdict.omitted:
        protocols["omitted"] = verdict.omitted
    context["protocols"] = protocols


@dataclass
class Outcome:
    kept: Indexed
    quarantined: list[Rejected]
    rejected: list[Rejected]
    violations: int


def enforce(plan: Plan | None, enforcement: str, messages: Indexed) -> Outcome:
    """Apply a source's plan to its valid (index, message)s: keep (allow/omit), quarantine or reject."""
    if plan is None:
        return Outcome(messages, [], [], 0)
    kept: Indexed = []
    held: list[Rejected] = []
    count = 0
    for index, message in messages:
        verdict = check(plan, message)
        count += len(verdict.violations)
        if verdict.violations and enforcement in ("quarantine", "reject"):
            held.append(Rejected(index, message, verdict.errors))
            continue
        if enforcement == "omit":
            apply_omissions(message, verdict)
        else:  # unplannedProperties: omit drops unplanned keys whatever the enforcement
            drop(message, verdict.omitted)
        annotate(message, plan, verdict)
        kept.append((index, message))
    if enforcement == "quarantine":
        return Outcome(kept, held, [], count)
    return Outcome(kept, [], held, count)


# --- the live registry ---------------------------------------------------------------------------------


class PlanRegistry:
    """The plans in force, reloaded when their files change (polled; an edit applies within ~0.2 s).

    A reload that fails, or that no longer has a plan some source names, is logged and the last
    good plans stay in force: deleting or renaming a plan never switches enforcement off.
    """

    POLL_SECONDS = 0.2

    def __init__(self, plans_dir: Path, required: Iterable[str] = ()) -> None:
        self.plans_dir = plans_dir
        self.required = frozenset(required)
        self.definitions = load_spec(default_spec_dir()).definitions  # the base spec does not hot-reload
        self.plans: dict[str, Plan] = {}
        self._stamp: tuple[tuple[str, int, int], ...] = ()
        self._task: asyncio.Task[None] | None = None
        plans, self._stamp = self._load()  # at start-up a broken or missing plan is fatal
        missing = self.required - set(plans)
        if missing:
            raise SpecError(f"tracking plans not found in {plans_dir}: {', '.join(sorted(missing))}")
        self.plans = plans

    def _current_stamp(self) -> tuple[tuple[str, int, int], ...]:
        if not self.plans_dir.is_dir():
            return ()
        stamps = []
        for path in sorted(self.plans_dir.glob("*.yaml")):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            stamps.append((path.name, stat.st_mtime_ns, stat.st_size))
        return tuple(stamps)

    def _load(self) -> tuple[dict[str, Plan], tuple[tuple[str, int, int], ...]]:
        stamp = self._current_stamp()
        plans, _schemas = load_plans(self.plans_dir, self.definitions)
        return plans, stamp

    def changed(self) -> bool:
        return self._current_stamp() != self._stamp

    def install(self, loaded: tuple[dict[str, Plan], tuple[tuple[str, int, int], ...]] | Exception) -> bool:
        """Swap in freshly loaded plans, or keep the current ones if the load failed or lacks a plan."""
        if isinstance(loaded, Exception):
            self._stamp = self._current_stamp()  # do not retry the same broken files every poll
            log.error("tracking plans not reloaded, keeping the previous ones: %s", loaded)
            return False
        plans, stamp = loaded
        missing = self.required - set(plans)
        if missing:
            self._stamp = stamp
            log.error("tracking plans not reloaded: %s missing, keeping the previous ones", ", ".join(sorted(missing)))
            return False
        self.plans, self._stamp = plans, stamp
        log.info("tracking plans loaded: %s", ", ".join(sorted(plans)) or "none")
        return True

    def reload(self) -> bool:
        """Load again (in this thread) if a file changed."""
        if not self.changed():
            return False
        try:
            loaded: Any = self._load()
        except Exception as exc:  # any broken edit, whatever its shape
            loaded = exc
        return self.install(loaded)

    def get(self, name: str | None) -> Plan | None:
        return self.plans.get(name) if name else None

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.POLL_SECONDS)
            if not self.changed():
                continue
            try:  # parsing and compiling takes ~100 ms: off the event loop
                loaded: Any = await asyncio.to_thread(self._load)
            except Exception as exc:
                loaded = exc
            self.install(loaded)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
