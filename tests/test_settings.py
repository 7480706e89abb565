"""Configuration: the README documents every setting; bad config fails loudly at start-up."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from collector.errors import ConfigError
from collector.settings import SETTINGS, env_name, load
from conftest import TOKEN, WRITE_KEY, config_doc

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
