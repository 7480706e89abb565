"""Case files: YAML documents under cases/, validated against schemas/case-file.schema.json.

A case is one or more steps (HTTP requests), each with checks. A file's `defaults` fill
every request of its cases, so a case states only what it is about.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

PACKAGE = Path(__file__).resolve().parent
CASES_DIR = PACKAGE / "cases"
SCHEMAS_DIR = PACKAGE / "schemas"
RETIRED_IDS = PACKAGE / "retired-ids.txt"


class CaseFileError(Exception):
    """A case file is unreadable or breaks the case-file schema (exit code 2)."""


@dataclass
class Step:
    request: dict[str, Any]
    checks: list[dict[str, Any]]
    save: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclass
class Case:
    id: str
    title: str
    suite: str
    file: str
    spec: list[dict[str, str]]
    profile: str
    requires: list[str]
    tags: list[str]
    status: str
    polarity: str
    steps: list[Step]
    twin: str | None = None
    field: str | None = None
    differs: list[str] = dataclasses.field(default_factory=list)
    schema: str | None = None
    basis: str = "segment"  # an inspect case checks what this profile promises (segment or collector)
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)

    def checks(self) -> list[dict[str, Any]]:
        return [check for step in self.steps for check in step.checks]

    def uses_read_back(self) -> bool:
        return any("stored" in check for check in self.checks())


def load_json(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS_DIR / name).read_text(encoding="utf-8"))
    return loaded


def read_documents(cases_dir: Path = CASES_DIR) -> list[tuple[Path, dict[str, Any]]]:
    """Every case file, parsed and schema-checked (raises CaseFileError)."""
    validator = jsonschema.Draft202012Validator(load_json("case-file.schema.json"))
    documents = []
    for path in sorted(cases_dir.glob("*.yaml")):
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise CaseFileError(f"{path.name}: not valid YAML: {exc}") from None
        problems = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        if problems:
            first = problems[0]
            where = "/".join(str(part) for part in first.absolute_path)
            raise CaseFileError(f"{path.name}: at /{where}: {first.message}")
        documents.append((path, document))
    return documents


def merge_request(defaults: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    merged = {key: value for key, value in defaults.items() if key != "headers"}
    headers = {**defaults.get("headers", {}), **request.get("headers", {})}
    merged["headers"] = {name: value for name, value in headers.items() if value is not None}  # null: do not send
    for key, value in request.items():
        if key != "headers":
            merged[key] = value
    # A body form given by the case replaces the default's body form.
    body_forms = ("body", "body_raw", "body_bytes", "body_file")
    given = [form for form in body_forms if form in request]
    if given:
        for form in body_forms:
            if form not in given:
                merged.pop(form, None)
    return merged


def build_case(document: dict[str, Any], entry: dict[str, Any], file_name: str) -> Case:
    defaults = document.get("defaults", {})
    if "steps" in entry:
        steps = [
            Step(merge_request(defaults, step.get("request", {})), step.get("checks", []), step.get("save", {}))
            for step in entry["steps"]
        ]
    else:
        steps = [
            Step(merge_request(defaults, entry.get("request", {})), entry.get("checks", []), entry.get("save", {}))
        ]
    return Case(
        id=entry["id"],
        title=entry["title"],
        suite=document["suite"],
        file=file_name,
        spec=entry["spec"],
        profile=entry["profile"],
        requires=entry.get("requires", document.get("requires", [])),
        tags=entry.get("tags", []),
        status=entry.get("status", "stable"),
        polarity=entry.get("polarity", "positive"),
        steps=steps,
        twin=entry.get("twin"),
        field=entry.get("field"),
        differs=entry.get("differs", []),
        schema=entry.get("schema", document.get("schema")),
        basis=entry.get("basis", "segment"),
        raw=entry,
    )


def load_cases(cases_dir: Path = CASES_DIR) -> list[Case]:
    cases = []
    for path, document in read_documents(cases_dir):
        for entry in document["cases"]:
            cases.append(build_case(document, entry, path.name))
    return cases


def retired_ids(path: Path = RETIRED_IDS) -> set[str]:
    if not path.exists():
        return set()
    return {line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()}


def select(cases: list[Case], patterns: list[str], tags: list[str]) -> list[Case]:
    """Cases whose id matches any glob pattern (all when none) and that carry every tag."""
    chosen = []
    for case in cases:
        if patterns and not any(fnmatch.fnmatchcase(case.id, pattern) for pattern in patterns):
            continue
        if tags and not all(tag in case.tags or tag == case.suite for tag in tags):
            continue
        chosen.append(case)
    return chosen
