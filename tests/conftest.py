"""Shared fixtures: a config with two workspaces, an in-process app on a real SQLite file, and
real collector processes (uvicorn) on free loopback ports."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT, Server, make_client, start_server, write_config
from starlette.testclient import TestClient


def pytest_sessionstart(session: pytest.Session) -> None:
    """The README's test command sets up what the tests use, on a fresh machine too: Debian's
    Chromium and wrk (as root), and the npm packages of tests/browser. Quick when all is there;
    COLLECTOR_TEST_SETUP=0 skips it."""
    if os.environ.get("COLLECTOR_TEST_SETUP") != "0":
        subprocess.run(["bash", str(ROOT / ".ci" / "system-packages")], check=True, stdin=subprocess.DEVNULL)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path / "collector.yaml")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


@pytest.fixture
def client(config_path: Path, db_url: str) -> Iterator[TestClient]:
    with make_client(config_path, db_url) as test_client:
        yield test_client


@pytest.fixture
def server(tmp_path: Path, config_path: Path, db_url: str) -> Iterator[Server]:
    running = start_server(tmp_path, config_path, db_url)
    yield running
    running.stop()
