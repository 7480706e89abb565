"""The validation stage: each message against the compiled schemas of its type, at two levels.

Validators are compiled once at start-up (jsonschema-rs). The common case, a message that meets
both the contract and the quality rules, costs one `is_valid` call against the full schema; the
contract schema is consulted only when that fails, to tell "not a message" (contract errors)
from "a message with quality problems" (stored and flagged).
"""

from __future__ import annotations

from itertools import islice
from typing import Any

import jsonschema_rs

from collector.paths import CALL_TYPES
from collector.pipeline.records import Problem

MAX_ERRORS_PER_MESSAGE = 20


def pointer(path: Any) -> str:
    """RFC 6901 JSON pointer from a jsonschema-rs path."""
    parts = [str(part).replace("~", "~0").replace("/", "~1") for part in path]
    return "/" + "/".join(parts) if parts else ""


class Validators:
    def __init__(self, schemas: dict[str, dict[str, Any]]) -> None:
        self.schemas = schemas
        self.by_type = {name: jsonschema_rs.validator_for(schemas[name]) for name in CALL_TYPES}  # both levels
        self.contract_by_type = {name: jsonschema_rs.validator_for(schemas[f"contract/{name}"]) for name in CALL_TYPES}
        compiled = {*CALL_TYPES, *(f"contract/{name}" for name in CALL_TYPES)}
        self.extra = {  # the batch envelope (both levels) and the profile API's bodies
            name: jsonschema_rs.validator_for(schema) for name, schema in schemas.items() if name not in compiled
        }

    def check(self, message: dict[str, Any]) -> tuple[list[Problem] | None, list[Problem]]:
        """(contract errors or None, quality problems) of a message whose full check failed."""
        contract = self.errors(message)
        if contract is not None:
            return contract, []
        kind = message["type"]
        return None, self._describe(self.by_type[kind], self.schemas[kind], message)

    def errors(self, message: dict[str, Any]) -> list[Problem] | None:
        """None when the message meets the contract, else its errors: pointer, keyword, message."""
        kind = message.get("type")
        validator = self.contract_by_type.get(kind) if isinstance(kind, str) else None
        if validator is None:
            return [
                Problem(
                    pointer="/type",
                    keyword="required" if kind is None else "enum",
                    message="type is required" if kind is None else f"unknown message type {kind!r}",
                )
            ]
        if validator.is_valid(message):
            return None
        return self._describe(validator, self.schemas[f"contract/{kind}"], message)

    def errors_for(self, schema_name: str, instance: Any) -> list[Problem] | None:
        validator = self.extra[schema_name]
        if validator.is_valid(instance):
            return None
        return self._describe(validator, self.schemas[schema_name], instance)

    def _describe(self, validator: Any, schema: dict[str, Any], instance: Any) -> list[Problem]:
        found: list[Problem] = []
        try:
            errors = list(islice(validator.iter_errors(instance), MAX_ERRORS_PER_MESSAGE))
        except ValueError:  # "Recursion limit reached": jsonschema-rs describes no deeper (is_valid does)
            return [Problem(pointer="", keyword="maxDepth", message="JSON nested too deeply to be checked")]
        for error in errors:
            keyword = str(error.schema_path[-1]) if error.schema_path else ""
            path = list(error.instance_path)
            if keyword == "required":  # point at the missing field itself, not its parent
                path.append(error.kind.property)
            entry = Problem(pointer=pointer(path), keyword=keyword, message=error.message)
            custom = _custom_message(schema, list(error.schema_path))
            if custom:
                entry["message"] = custom["message"]
                if custom.get("field"):
                    entry["pointer"] = pointer([*error.instance_path, custom["field"]])
            found.append(entry)
            if len(found) >= MAX_ERRORS_PER_MESSAGE:
                break
        found.sort(key=lambda e: e["pointer"])
        return found


def _custom_message(schema: dict[str, Any], schema_path: list[Any]) -> dict[str, Any] | None:
    """`x-errorMessage` of the schema node holding the failed keyword (e.g. the identity anyOf)."""
    if not schema_path:
        return None
    node: Any = schema
    for part in schema_path[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    if isinstance(node, dict):
        messages = node.get("x-errorMessage")
        if isinstance(messages, dict):
            found = messages.get(str(schema_path[-1]))
            return found if isinstance(found, dict) else None
    return None
