"""Configuration: the README documents every setting; bad config fails loudly at start-up."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from helpers import TOKEN, WRITE_KEY, config_doc

from collector.errors import ConfigError
from collector.settings import SETTINGS, env_name, load

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_in_the_readme_table_with_its_default() -> None:
    table = README.read_text().split("<!-- settings-table -->")[1].split("<!-- /settings-table -->")[0]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(COLLECTOR_[A-Z_]+)` \| `([^`]*)` \|", table, re.M)}
    assert rows == {env_name(s.name): str(s.default) for s in SETTINGS}


def test_env_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config_doc(limits={"maxEventBytes": 1000}, storage="sqlite:///file.db")))
    settings = load(path, environ={})
    assert settings.max_event_bytes == 1000 and settings.storage == "sqlite:///file.db"
    settings = load(path, environ={"COLLECTOR_MAX_EVENT_BYTES": "2000", "COLLECTOR_STORAGE": "sqlite:///env.db"})
    assert settings.max_event_bytes == 2000 and settings.storage == "sqlite:///env.db"
    assert settings.write_keys[WRITE_KEY].workspace_id == "ws_TestWorkspace001"
    assert settings.workspace_for_token(TOKEN) is not None and settings.workspace_for_token("nope") is None


@pytest.mark.parametrize(
    ("doc", "env", "message"),
    [
        (config_doc(workspaces=[{"id": "ws_short", "sources": []}]), {}, "ws_ \\+ 16"),
        (config_doc(workspaces=[{"id": "ws_AAAAAAAAAAAAAAAA", "sources": [{"id": "s"}]}]), {}, "writeKeys"),
        (
            config_doc(
                workspaces=[
                    {"id": "ws_AAAAAAAAAAAAAAAA", "sources": [{"id": "a", "writeKeys": ["k"]}]},
                    {"id": "ws_BBBBBBBBBBBBBBBB", "sources": [{"id": "b", "writeKeys": ["k"]}]},
                ]
            ),
            {},
            "already used",
        ),
        (
            config_doc(
                workspaces=[
                    {"id": "ws_AAAAAAAAAAAAAAAA", "tokens": ["t"]},
                    {"id": "ws_BBBBBBBBBBBBBBBB", "tokens": ["t"]},
                ]
            ),
            {},
            "exactly one workspace",
        ),
        (config_doc(), {"COLLECTOR_MAX_EVENT_BYTES": "lots"}, "integer"),
        (config_doc(), {"COLLECTOR_INVALID_MESSAGES": "drop"}, "invalid_messages"),
        (config_doc(), {"COLLECTOR_TRUSTED_PROXIES": "10.0.0.0/33"}, "trusted_proxies"),
        (config_doc(), {"COLLECTOR_SQLITE_SYNCHRONOUS": "OFF"}, "sqlite_synchronous"),
    ],
    ids=[
        "bad-workspace-id",
        "no-write-keys",
        "shared-write-key",
        "shared-token",
        "bad-int",
        "bad-mode",
        "bad-cidr",
        "bad-synchronous",
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, doc: dict[str, object], env: dict[str, str], message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=message):
        load(path, environ=env)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "absent.yaml", environ={})


# --- the config file's JSON Schema ------------------------------------------------------------


def write_doc(tmp_path: Path, doc: dict[str, object]) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_typo_in_a_source_fails_with_its_path_and_the_nearest_name(tmp_path: Path) -> None:
    doc = config_doc()
    doc["workspaces"][0]["sources"][0]["alowedOrigins"] = ["https://shop.example"]
    with pytest.raises(ConfigError) as caught:
        load(write_doc(tmp_path, doc), environ={})
    assert "workspaces[0].sources[0].alowedOrigins: unknown key; did you mean allowedOrigins?" in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"limts": {"maxEventBytes": 1000}}, "limts: unknown key; did you mean limits?"),
        ({"limits": {"maxEventByte": 1000}}, "limits.maxEventByte: unknown key; did you mean maxEventBytes?"),
        ({"adminToken": ["x"]}, "adminToken: unknown key; did you mean adminTokens?"),
        ({"limits": {"maxEventBytes": "lots"}}, "limits.maxEventBytes: must be an integer, got 'lots'"),
        ({"maxBatchEvents": True}, "maxBatchEvents: must be an integer, got a boolean (true)"),
        ({"workspaces": {"id": "ws_AAAAAAAAAAAAAAAA"}}, "workspaces: must be a list, got a mapping"),
        ({"workspaces": [{"id": "ws_AAAAAAAAAAAAAAAA", "sources": [{"writeKeys": {"k": 1}}]}]}, "sources[0].writeKeys"),
        ({"workspaces": [{"id": "ws_AAAAAAAAAAAAAAAA", "token": ["t"]}]}, "did you mean tokens?"),
    ],
    ids=["top-level", "in-limits", "admin", "int-as-text", "bool", "not-a-list", "keys-mapping", "workspace-key"],
)
def test_unknown_keys_and_wrong_types_name_their_path(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write_doc(tmp_path, config_doc(**overrides)), environ={})
    assert message in str(caught.value)


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    doc = config_doc(limts={}, storag="sqlite:///x.db")
    with pytest.raises(ConfigError) as caught:
        load(write_doc(tmp_path, doc), environ={})
    assert "limts: unknown key" in str(caught.value) and "storag: unknown key; did you mean storage?" in str(
        caught.value
    )


def test_the_committed_schema_is_valid_draft_2020_12_and_built_from_the_settings_table() -> None:
    from jsonschema import Draft202012Validator

    from collector.config_check import SCHEMA_PATH
    from collector.config_schema import build, camel, dumps

    committed = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(committed)
    assert committed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA_PATH.read_text() == dumps(build()), "run: collector config schema > collector/config.schema.json"
    for setting in SETTINGS:
        described = committed["$defs"]["settings"]["properties"][camel(setting.name)]
        assert described["description"] == setting.help and described["default"] == setting.default
        assert (
            camel(setting.name) in committed["properties"]
            and camel(setting.name) in committed["properties"]["limits"]["properties"]
        )


def every_key_used_today() -> list[dict[str, object]]:
    """config_doc() and the variants the tests and README write, each key at least once."""
    full_source = {
        "id": "src_all",
        "name": "All keys",
        "writeKeys": "WK_A, WK_B",
        "invalidMessages": "quarantine",
        "allowedOrigins": ["https://shop.example", "https://*.shop.example"],
        "rateLimit": "10:20",
        "trackingPlan": None,
        "planEnforcement": "omit",
        "qualityEnforcement": "quarantine",
    }
    docs = [
        config_doc(),
        config_doc(limits={"maxEventBytes": 1000}, storage="sqlite:///file.db"),
        config_doc(
            adminTokens="adm_a,adm_b",
            trustedProxies=["10.0.0.0/8"],
            rateLimit=5,
            invalidMessages="quarantine",
            sqliteSynchronous="normal",
            max_request_bytes="1000",  # snake_case, digits as text: read today
            limits={"maxBatchEvents": 10, "retryAfterSeconds": 2},
            workspaces=[
                {"id": "ws_AAAAAAAAAAAAAAAA", "name": "A", "tokens": "tok_a", "sources": [full_source]},
                {"id": "ws_BBBBBBBBBBBBBBBB", "sources": None},
                {"id": "ws_CCCCCCCCCCCCCCCC", "name": 2024, "sources": [{"id": 7, "writeKeys": [12345]}]},
            ],
        ),
    ]
    readme = README.read_text()
    docs += [
        yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "workspaces:" in block
    ]
    return docs


def test_every_config_valid_before_the_schema_still_loads(tmp_path: Path) -> None:
    from collector.config_check import problems
    from collector.settings import write_dev_config

    for doc in every_key_used_today():
        assert problems(doc) == [], doc
        load(write_doc(tmp_path, doc), environ={})
    write_dev_config(tmp_path / "dev.yaml")
    load(tmp_path / "dev.yaml", environ={})
