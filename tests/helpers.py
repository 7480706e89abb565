"""What the tests share besides fixtures: the test config, its keys and tokens, clients, a real
server process, and metric scraping (conftest.py keeps only the fixtures)."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from collector.app import create_app
from collector.settings import load

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "reference"


WRITE_KEY = "WK_TEST"  # the key the captures in shared/reference/captures were recorded with
QUARANTINE_KEY = "WK_QUARANTINE"
STRICT_KEY = "WK_STRICT"  # a source that rejects quality violations (qualityEnforcement: reject)
OTHER_KEY = "WK_OTHER"
WORKSPACE = "ws_TestWorkspace001"
OTHER_WORKSPACE = "ws_OtherWorkspace02"
TOKEN = "tok_test_workspace"
OTHER_TOKEN = "tok_other_workspace"
ADMIN = "adm_test"


def config_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "adminTokens": [ADMIN],
        "workspaces": [
            {
                "id": WORKSPACE,
                "name": "Test",
                "tokens": [TOKEN],
                "sources": [
                    {"id": "src_web", "name": "Website", "writeKeys": [WRITE_KEY]},
                    {
                        "id": "src_q",
                        "name": "Quarantining",
                        "writeKeys": [QUARANTINE_KEY],
                        "invalidMessages": "quarantine",
                    },
                    {
                        "id": "src_strict",
                        "name": "Strict",
                        "writeKeys": [STRICT_KEY],
                        "qualityEnforcement": "reject",
                    },
                ],
            },
            {
                "id": OTHER_WORKSPACE,
                "name": "Other",
                "tokens": [OTHER_TOKEN],
                "sources": [{"id": "src_other", "name": "Other site", "writeKeys": [OTHER_KEY]}],
            },
        ],
    }
    doc.update(overrides)
    return doc


def write_config(path: Path, **overrides: Any) -> Path:
    path.write_text(yaml.safe_dump(config_doc(**overrides)), encoding="utf-8")
    return path


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_client(config: Path, storage: str, **env: str) -> TestClient:
    environ = {"COLLECTOR_STORAGE": storage} | env
    return TestClient(create_app(load(config, environ=environ)), client=("203.0.113.7", 50000))


def stored(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    """Events stored, as the read-back API returns them (the event objects)."""
    answer = client.get("/v1/events", params={"limit": 1000, **params}, headers=bearer(ADMIN))
    assert answer.status_code == 200, answer.text
    return [item["event"] for item in answer.json()["data"]]


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient | httpx.Client, base_url: str = "") -> Samples:
    answer = client.get(base_url + "/metrics", headers=bearer(ADMIN))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --- real processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    tmp_path: Path,
    config: Path,
    storage: str,
    *extra: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
    name: str = "server",
) -> Server:
    port = port or free_port()
    log_path = tmp_path / f"{name}-{port}.log"
    args = [
        sys.executable,
        "-m",
        "collector",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--config",
        str(config),
        "--storage",
        storage,
        *extra,
    ]
    with log_path.open("wb") as log_file:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            args, cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path, args)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"collector exited early:\n{server.log()}")
        try:
            if httpx.get(server.url + "/ready", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"collector did not become ready:\n{server.log()}")
