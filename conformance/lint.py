"""`conformance lint`: the case files keep their promises.

- every file validates against schemas/case-file.schema.json;
- ids are unique and none is in retired-ids.txt (ids are permanent, never reused);
- every spec anchor resolves into spec/*.yaml (or a README.md section) and its quote is
  found there, so a case cannot cite text the spec does not say;
- every negative case names a positive twin, and the two requests differ only in what
  the negative says it varies (`field`, or the request keys in `differs`);
- with `field`: the twin's body passes the generated JSON Schema and the negative's body
  fails it at that field (batch items are validated by the schema of their type);
- profile `inspect` cases check storage; `segment` and `collector` cases check the answer;
- `segment` cases (and inspect cases of segment's promises) cite what Segment documents
  (conformance/reference/segment-protocol.md#section) or a real client's capture.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from conformance.casefile import PACKAGE, Case, CaseFileError, build_case, read_documents, retired_ids
from conformance.template import Renderer

CALL_PATHS = {
    "track": ("/v1/track", "/v1/t"),
    "identify": ("/v1/identify", "/v1/i"),
    "page": ("/v1/page", "/v1/p"),
    "screen": ("/v1/screen", "/v1/s"),
    "group": ("/v1/group", "/v1/g"),
    "alias": ("/v1/alias", "/v1/a"),
}
BATCH_PATHS = ("/v1/batch", "/v1/import", "/v1/b")


def find_spec_dir() -> Path | None:
    for candidate in (PACKAGE.parent / "spec", PACKAGE.parent / "collector" / "_spec", Path.cwd() / "spec"):
        if (candidate / "common.yaml").exists():
            return candidate
    return None


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("`", "").replace("**", "")).strip()


def rule_text(value: Any) -> str | None:
    """A scalar rule as YAML shows it (`512`, `true`, `[string, number]`); None for anything else."""
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, list) and value and all(isinstance(item, str | int | float) for item in value):
        return "[" + ", ".join(str(item) for item in value) + "]"
    return None


def strings_in(node: Any) -> list[str]:
    """Every string under a spec node, and every scalar rule as `key: value` (`maxLength: 512`), so a
    quote can state the rule a case checks, not only a field's description."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        rules = [f"{key}: {rule_text(value)}" for key, value in node.items() if rule_text(value) is not None]
        return rules + [text for value in node.values() for text in strings_in(value)]
    if isinstance(node, list):
        return [text for value in node for text in strings_in(value)]
    return []


def slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).strip().replace(" ", "-")


def readme_sections(readme: Path) -> dict[str, str]:
    sections: dict[str, str] = {}
    current = ""
    for line in readme.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            current = slug(line.lstrip("#").strip())
            sections.setdefault(current, "")
        elif current:
            sections[current] += line + "\n"
    return sections


REFERENCE = "conformance/reference/"  # copies of the protocol notes and captures, shipped with the kit


def resolve_anchor(ref: str, quote: str, spec_dir: Path) -> str | None:
    """None when the anchor resolves and holds the quote, else the problem."""
    file_part, _, fragment = ref.partition("#")
    if file_part.startswith(REFERENCE):
        # What Segment documents (segment-protocol.md, by section) or what a real client sent (a capture).
        path = spec_dir.parent / file_part
        if not path.exists():
            return f"{ref}: {path} does not exist"
        text = path.read_text(encoding="utf-8")
        texts = [readme_sections(path).get(fragment)] if fragment else [text]
        if texts == [None]:
            return f"{ref}: no section with anchor {fragment!r}"
    elif file_part == "README.md":
        readme = spec_dir.parent / "README.md"
        if not readme.exists():
            return f"{ref}: README.md not found next to {spec_dir}"
        section = readme_sections(readme).get(fragment)
        if section is None:
            return f"{ref}: no README section with anchor {fragment!r}"
        texts = [section]
    else:
        if not file_part.startswith("spec/") or not file_part.endswith(".yaml"):
            return f"{ref}: anchors point into spec/*.yaml or README.md"
        path = spec_dir / file_part.removeprefix("spec/")
        if not path.exists():
            return f"{ref}: {path} does not exist"
        node: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
        for part in fragment.split(".") if fragment else []:
            if not isinstance(node, dict) or part not in node:
                return f"{ref}: {part!r} not found in {file_part}"
            node = node[part]
        texts = strings_in(node)
    wanted = normalize(quote)
    if not any(text is not None and wanted in normalize(text) for text in texts):
        return f"{ref}: quote not found there: {quote!r}"
    return None


def schema_name(case: Case, request: dict[str, Any]) -> str | None:
    if case.schema:
        return case.schema
    path = str(request.get("path", ""))
    for kind, paths in CALL_PATHS.items():
        if path in paths:
            return kind
    if path in BATCH_PATHS:
        return "batch"
    if path.endswith("/identify"):
        return "profile-create"
    if "/identify/" in path:
        return "profile-update"
    if "/track/" in path:
        return "profile-track"
    return None


def pointer(parts: list[Any]) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


def error_pointers(schema: dict[str, Any], instance: Any, prefix: str = "") -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    found = []
    for error in validator.iter_errors(instance):
        parts = list(error.absolute_path)
        if error.validator == "required":
            missing = [name for name in error.validator_value if name not in (error.instance or {})]
            parts += missing[:1]
        custom = None
        node: Any = schema
        for part in list(error.absolute_schema_path)[:-1]:
            try:  # a path through $ref does not walk the root schema: no custom message then
                node = node[part]
            except (KeyError, IndexError, TypeError):
                node = None
                break
        if isinstance(node, dict) and isinstance(node.get("x-errorMessage"), dict):
            custom = node["x-errorMessage"].get(error.validator)
        if isinstance(custom, dict) and custom.get("field"):
            parts.append(custom["field"])
        found.append(prefix + pointer(parts))
    return found


def schema_errors(name: str, body: Any, request: dict[str, Any], schemas: dict[str, Any]) -> list[str]:
    """Pointers of every schema error of a body, validated the way the server does."""
    if name == "batch":
        found = error_pointers(schemas["batch"], body)
        for index, item in enumerate(body.get("batch", []) if isinstance(body, dict) else []):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind in CALL_PATHS:
                found += error_pointers(schemas[kind], item, f"/batch/{index}")
        return sorted(set(found))
    if name in CALL_PATHS and isinstance(body, dict):
        body = {"type": name, **body}
    return error_pointers(schemas[name], body)


def delete_pointer(document: Any, field: str) -> Any:
    document = copy.deepcopy(document)
    parts = [p.replace("~1", "/").replace("~0", "~") for p in field.strip("/").split("/")]
    node = document
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.get(part, {})
    if isinstance(node, dict):
        node.pop(parts[-1], None)
    elif isinstance(node, list) and parts[-1].isdigit() and int(parts[-1]) < len(node):
        node.pop(int(parts[-1]))
    return document


def render_body(case: Case, request: dict[str, Any]) -> Any:
    renderer = Renderer("lintrun", case.id, "lint-key")
    renderer.saved = {"user": "usr_AAAAAAAAAAAAAAAA"}
    if "body_file" in request:
        return renderer.render(json.loads((PACKAGE / "payloads" / request["body_file"]).read_text()))
    return renderer.render(request.get("body"))


def check_twins(case: Case, by_id: dict[str, Case], schemas: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if case.polarity != "negative":
        return problems
    twin = by_id.get(case.twin or "")
    if twin is None:
        return [f"{case.id}: negative case needs a `twin` that exists (got {case.twin!r})"]
    if twin.polarity != "positive":
        return [f"{case.id}: twin {twin.id} must be a positive case"]
    mine = case.steps[-1].request
    # The twin's step under test is the one with the same method (a twin may create first, read after).
    same = [step.request for step in twin.steps if step.request.get("method") == mine.get("method")]
    theirs = same[-1] if same else twin.steps[-1].request
    if case.field:
        name = schema_name(case, mine)
        if name is None or name not in schemas:
            return [f"{case.id}: no schema for path {mine.get('path')!r}; set `schema`"]
        negative_body, positive_body = render_body(case, mine), render_body(twin, theirs)
        twin_errors = schema_errors(name, positive_body, theirs, schemas)
        if twin_errors:
            problems.append(f"{case.id}: twin {twin.id} body must pass {name}.json, fails at {twin_errors}")
        errors = schema_errors(name, negative_body, mine, schemas)
        if not any(e == case.field or e.startswith(case.field + "/") for e in errors):
            problems.append(f"{case.id}: body must fail {name}.json at {case.field}; errors at {errors or 'none'}")
        if delete_pointer(mine.get("body"), case.field) != delete_pointer(theirs.get("body"), case.field):
            problems.append(f"{case.id}: body differs from twin {twin.id} outside {case.field}")
        different = {k for k in set(mine) | set(theirs) if k != "body" and mine.get(k) != theirs.get(k)}
    else:
        different = {k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
        if not case.differs:
            problems.append(f"{case.id}: a negative case names `field` or `differs`")
    extra = different - set(case.differs)
    if extra:
        problems.append(f"{case.id}: request differs from twin {twin.id} in {sorted(extra)}, not declared in differs")
    return problems


def check_profile(case: Case) -> list[str]:
    stored = [check for check in case.checks() if "stored" in check]
    answer = [check for check in case.checks() if "stored" not in check and "profile" not in check]
    if case.profile == "inspect" and not stored:
        return [f"{case.id}: profile inspect but no `stored` check"]
    if case.profile in ("segment", "collector") and not answer:
        return [f"{case.id}: profile {case.profile} needs a check of the answer"]
    if case.profile == "segment" and not any(ref["ref"].startswith(REFERENCE) for ref in case.spec):
        return [f"{case.id}: a segment case cites what Segment documents or a real client sent ({REFERENCE}…)"]
    if (
        case.profile == "inspect"
        and case.basis == "segment"
        and not any(ref["ref"].startswith(REFERENCE) for ref in case.spec)
    ):
        return [f"{case.id}: an inspect case of segment's promises cites it ({REFERENCE}…)"]
    return []


def lint(spec_dir: Path, cases_dir: Path | None = None) -> tuple[list[str], int]:
    try:
        documents = read_documents(cases_dir) if cases_dir else read_documents()
    except CaseFileError as exc:
        return [str(exc)], 0
    schemas = {
        path.stem: json.loads(path.read_text(encoding="utf-8")) for path in (spec_dir / "schemas").glob("*.json")
    }
    problems: list[str] = []
    cases: list[Case] = []
    retired = retired_ids()
    for path, document in documents:
        for entry in document["cases"]:
            cases.append(build_case(document, entry, path.name))
    by_id: dict[str, Case] = {}
    for case in cases:
        if case.id in by_id:
            problems.append(f"{case.id}: duplicate id ({by_id[case.id].file} and {case.file})")
        if case.id in retired:
            problems.append(f"{case.id}: id is retired and must not be reused")
        by_id[case.id] = case
    for case in cases:
        for anchor in case.spec:
            problem = resolve_anchor(anchor["ref"], anchor["quote"], spec_dir)
            if problem:
                problems.append(f"{case.id}: {problem}")
        problems += check_twins(case, by_id, schemas)
        problems += check_profile(case)
    return problems, len(cases)
