"""/openapi.json describes every endpoint; schemathesis, run against a live collector process,
finds no 5xx and no answer (status, content type, body, headers) that contradicts the document."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from helpers import ADMIN, TOKEN, WRITE_KEY, Server, start_server, write_config
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from collector.app import routes
from collector.paths import EVENT_PATHS

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("openapi")
    config = write_config(tmp / "collector.yaml")
    # NORMAL: hundreds of generated writes; durability is tested elsewhere.
    server = start_server(tmp, config, f"sqlite:///{tmp / 'events.db'}", env={"COLLECTOR_SQLITE_SYNCHRONOUS": "NORMAL"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_schema(live: Server) -> Any:
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


def credentials(path: str) -> dict[str, str]:
    """Real credentials per family of endpoints, so the fuzzing reaches past authentication."""
    if path.startswith(("/v1/events", "/v1/quarantine", "/v1/receipts", "/metrics", "/debugger")):
        return {"Authorization": f"Bearer {ADMIN}"}
    if path.startswith(("/identify", "/track/", "/api/v1/")):
        return {"Authorization": f"Bearer {TOKEN}"}
    if path.startswith("/v1/"):
        return {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
    return {}


# The stream is endless by design (10 s per connection); its 200/401 are checked in test_debugger.py.
@schema.exclude(path="/debugger/stream").parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_no_server_errors_and_no_answer_contradicts_the_document(case: Any, live: Server) -> None:
    if case.query:
        case.query.pop("wait", None)  # `wait` holds an answer up to 30 s: not worth fuzzing
    case.call_and_validate(base_url=live.url, headers=credentials(case.path), checks=CHECKS)


def test_document_lists_every_route(live: Server) -> None:
    document = httpx.get(f"{live.url}/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    documented = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "delete")
    }
    served = set()
    for route in routes():
        assert isinstance(route, Route)
        path = route.path.replace("{message_id:path}", "{messageId}").replace("{user_id}", "{userId}")
        path = path.replace("{write_key}", "{writeKey}")
        for method in route.methods or ():
            if method != "HEAD":
                served.add((path, method))
    served |= {(path, "POST") for path in EVENT_PATHS}  # answered by the front door itself
    assert served - documented == set()
    assert documented - served == set()
    error = document["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"status", "code", "message", "moreInfo"}
