"""spec/*.yaml → spec/schemas/*.json: generation, meta-schema validity, staleness."""

from __future__ import annotations

import shutil
from pathlib import Path

import jsonschema
import orjson
import pytest

from collector import paths
from collector.cli import main
from collector.schema import build, dsl, spec

SPEC = Path(__file__).resolve().parent.parent / "spec"


def test_committed_schemas_are_up_to_date() -> None:
    assert build.check(SPEC) == []


def test_every_generated_schema_is_valid_draft_2020_12() -> None:
    schemas = spec.load_schemas(SPEC)
    assert set(schemas) >= {*paths.CALL_TYPES, "batch", "profile-create", "profile-track", "profile-update"}
    for schema in schemas.values():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)


def test_a_yaml_edit_makes_the_committed_schemas_stale(tmp_path: Path) -> None:
    copy = tmp_path / "spec"
    shutil.copytree(SPEC, copy)
    track = copy / "calls" / "track.yaml"
    track.write_text(track.read_text().replace("maxLength: 512", "maxLength: 200"))
    problems = build.check(copy)
    assert problems == [f"{copy / 'schemas' / 'track.json'} is stale (run `collector spec build`)"]
    assert main(["spec", "check", "--spec-dir", str(copy)]) == 1
    assert main(["spec", "build", "--spec-dir", str(copy)]) == 0
    assert build.check(copy) == []
    assert orjson.loads((copy / "schemas" / "track.json").read_bytes())["properties"]["event"]["maxLength"] == 200


def test_unknown_type_in_yaml_is_a_spec_error(tmp_path: Path) -> None:
    copy = tmp_path / "spec"
    shutil.copytree(SPEC, copy)
    track = copy / "calls" / "track.yaml"
    track.write_text(
        track.read_text().replace(
            "type: number\n          description: Revenue", "type: money\n          description: Revenue"
        )
    )
    with pytest.raises(dsl.SpecError, match=r"track\.properties\.revenue: unknown type 'money'"):
        build.build(copy)


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(spec.load_schemas(SPEC)[name])


@pytest.mark.parametrize(
    ("call", "message", "valid"),
    [
        ("track", {"type": "track", "event": "A", "userId": "u"}, True),
        ("track", {"type": "track", "event": "A", "anonymousId": "a", "userId": None}, True),
        ("track", {"type": "track", "event": "A", "userId": None, "anonymousId": None}, False),
        ("track", {"type": "track", "userId": "u"}, False),
        ("track", {"type": "track", "event": "A", "userId": "u", "properties": {"revenue": "19.99"}}, False),
        ("track", {"type": "track", "event": "A", "userId": "u", "properties": {"currency": "usd"}}, False),
        ("track", {"type": "track", "event": "A", "userId": "u", "properties": {"currency": "USD", "value": 3}}, True),
        ("identify", {"type": "identify", "userId": 42, "traits": {"age": 34, "email": "a@b.c"}}, True),
        ("identify", {"type": "identify", "userId": "u", "traits": {"age": "34"}}, False),
        ("group", {"type": "group", "userId": "u"}, False),
        ("group", {"type": "group", "userId": "u", "groupId": "g"}, True),
        ("alias", {"type": "alias", "userId": "u", "previousId": "u"}, True),
        ("alias", {"type": "alias", "userId": "u"}, False),
        ("alias", {"type": "alias", "anonymousId": "a", "previousId": "p"}, False),
        ("page", {"type": "page", "anonymousId": "a", "category": None, "properties": {"keywords": ["x"]}}, True),
        ("page", {"type": "page", "anonymousId": "a", "properties": {"keywords": "x"}}, False),
        ("screen", {"type": "screen", "userId": "u", "name": "Home"}, True),
        ("track", {"type": "track", "event": "A", "userId": "u", "context": {"ip": 5}}, False),
        ("track", {"type": "track", "event": "A", "userId": "u", "context": {"custom": {"x": 1}}}, True),
    ],
)
def test_generated_schemas_encode_the_spec(call: str, message: dict[str, object], valid: bool) -> None:
    assert validator(call).is_valid(message) is valid


def test_quality_rules_live_only_in_the_full_schema_and_null_means_absent() -> None:
    import jsonschema_rs

    schemas = spec.load_schemas(SPEC)
    full, contract = schemas["track"], schemas["contract/track"]
    assert contract["$id"].endswith("/contract/track.json")
    assert full["properties"]["properties"]["properties"]["currency"]["pattern"] == "^[A-Z]{3}$"
    assert "properties" not in contract["properties"]["properties"]  # no reserved types in the contract
    assert "maxLength" not in contract["properties"]["event"] and full["properties"]["event"]["maxLength"] == 512
    slips = {"type": "track", "event": "", "userId": "u", "properties": {"revenue": "1", "currency": "usd"}}
    assert jsonschema_rs.validator_for(contract).is_valid(slips)
    assert not jsonschema_rs.validator_for(full).is_valid(slips)
    for message in (
        {"type": "identify", "userId": "u", "traits": {"email": None, "address": None}, "context": None},
        {"type": "track", "event": "E", "anonymousId": "a", "properties": None, "integrations": None},
    ):
        for level in ("", "contract/"):
            assert jsonschema_rs.validator_for(schemas[level + message["type"]]).is_valid(message)
    not_a_message = {"type": "track", "userId": "u", "properties": "a=1"}
    assert not jsonschema_rs.validator_for(contract).is_valid(not_a_message)


def test_readme_levels_table_is_the_generated_one(tmp_path: Path) -> None:
    from collector.spec_table import BEGIN, END, render

    readme = (SPEC.parent / "README.md").read_text()
    section = BEGIN + readme.split(BEGIN)[1].split(END)[0] + END
    assert section == render(spec.load(SPEC)), "run `collector spec table --write README.md`"
    copy = tmp_path / "README.md"
    copy.write_text(readme.replace("| track | `properties.{revenue, value}` | a number |", "| track | x | y |"))
    assert main(["spec", "table", "--write", str(copy)]) == 0
    assert copy.read_text() == readme
