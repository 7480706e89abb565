"""The kit installs alone: its wheel, built from conformance/pyproject.toml, goes into a fresh venv
without the collector (no Starlette, uvicorn or storage drivers) and runs against a server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

from helpers import ROOT, WRITE_KEY
from segment_minimal_server import serve

from conformance import KIT_VERSION

KIT = ROOT / "conformance"


def test_the_kit_version_is_the_distribution_version() -> None:
    project = tomllib.loads((KIT / "pyproject.toml").read_text())["project"]
    assert project["version"] == KIT_VERSION
    assert sorted(d.split(">")[0] for d in project["dependencies"]) == ["httpx", "jsonschema", "pyyaml"]
    assert project["scripts"] == {"conformance": "conformance.cli:main"}


def test_the_wheel_installs_into_a_fresh_venv_and_runs_against_a_server(tmp_path: Path) -> None:
    # Build from a copy, so the build leaves no build/ or egg-info in the work tree.
    source = tmp_path / "src" / "conformance"
    shutil.copytree(KIT, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)]
    subprocess.run(build, check=True, capture_output=True, timeout=240)
    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "conformance/cases/track.yaml" in names and "conformance/schemas/results.schema.json" in names
    assert "conformance/payloads/capture-node-batch.json" in names and "conformance/retired-ids.txt" in names
    assert not [name for name in names if name.startswith(("collector/", "tests/"))]

    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python, conformance = env / "bin" / "python", env / "bin" / "conformance"
    install = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=240)
    installed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True)
    packages = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert {"segment-conformance", "httpx", "pyyaml", "jsonschema"} <= packages
    assert not packages & {"collector", "starlette", "uvicorn", "orjson", "psycopg", "nats-py", "jsonschema-rs"}

    server = serve(0, [WRITE_KEY])
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        report = tmp_path / "report"
        clean = {"PATH": "/usr/bin:/bin"}  # no PYTHONPATH: only what the venv installed
        done = subprocess.run(
            [str(conformance), "run", "--target", url, "--write-key", WRITE_KEY, "--report-dir", str(report)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=clean,
            timeout=240,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("level: Segment-compatible")
    assert json.loads((report / "results.json").read_text())["kit"]["version"] == KIT_VERSION
    assert (report / "junit.xml").exists() and (report / "summary.md").exists()
