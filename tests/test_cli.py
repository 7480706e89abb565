"""The command line: `collector serve` with no config starts a dev workspace; `events tail` prints events."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml
from helpers import free_port


def test_serve_without_config_creates_a_dev_workspace_and_prints_its_keys(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "collector", "serve", "--port", str(port)],
            cwd=tmp_path,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        output = log.read_text()
        write_key = re.search(r"write key:\s+(\S+)", output)
        admin = re.search(r"admin token:\s+(\S+)", output)
        assert write_key and admin, output
        config = yaml.safe_load((tmp_path / "collector.yaml").read_text())
        assert config["workspaces"][0]["sources"][0]["writeKeys"] == [write_key.group(1)]
        assert (tmp_path / "collector.yaml").stat().st_mode & 0o077 == 0  # secrets: owner only
        assert (tmp_path / "collector.db").exists()  # the embedded default

        sent = httpx.post(url + "/v1/track", auth=(write_key.group(1), ""), json={"event": "Hello", "userId": "u"})
        assert sent.status_code == 200
        tail = subprocess.run(
            [sys.executable, "-m", "collector", "events", "tail", "--url", url, "--admin-token", admin.group(1)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert tail.returncode == 0, tail.stderr
        assert '"event": "Hello"' in tail.stdout
    finally:
        process.terminate()
        process.wait(timeout=15)
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert process.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in log.read_text()


def test_spec_check_command_passes_on_the_committed_schemas() -> None:
    result = subprocess.run([sys.executable, "-m", "collector", "spec", "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def serve_and_fail(config: Path) -> subprocess.CompletedProcess[str]:
    """`collector serve` with a config it must refuse at start-up."""
    port = str(free_port())
    args = [sys.executable, "-m", "collector", "serve", "--config", str(config), "--port", port]
    return subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=config.parent)


def test_bad_config_exits_2_with_a_sentence(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("workspaces: [{id: nope}]\n")
    result = serve_and_fail(config)
    assert result.returncode == 2
    assert "workspaces[0].id must match" in result.stderr


def test_serve_with_a_typo_in_the_config_exits_2_with_the_suggestion(tmp_path: Path) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text(
        "limts: {maxEventBytes: 1000}\n"
        "workspaces:\n"
        "  - id: ws_AAAAAAAAAAAAAAAA\n"
        "    sources:\n"
        "      - {id: src_web, writeKeys: [k], alowedOrigins: ['https://shop.example']}\n"
    )
    result = serve_and_fail(config)
    assert result.returncode == 2, result.stderr
    assert "workspaces[0].sources[0].alowedOrigins: unknown key; did you mean allowedOrigins?" in result.stderr
    assert "limts: unknown key; did you mean limits?" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_schema_command_prints_the_committed_schema() -> None:
    result = subprocess.run([sys.executable, "-m", "collector", "config", "schema"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (Path(__file__).resolve().parent.parent / "collector" / "config.schema.json").read_text()


def test_config_check_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("workspaces: [{id: ws_AAAAAAAAAAAAAAAA, sources: [{id: s, writeKeys: [k]}]}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "collector", "config", "check", str(good)], capture_output=True, text=True
    )
    assert result.returncode == 0 and "valid" in result.stdout, result.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text("limts: {}\n")
    result = subprocess.run(
        [sys.executable, "-m", "collector", "config", "check", str(typo)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "limts: unknown key; did you mean limits?" in result.stderr
