"""Bodies a browser sends without a preflight, and ingest paths under other prefixes, against one
real `collector serve` over plain HTTP (httpx).

- no Content-Type (a sendBeacon Blob without a type) and text/plain: the body is the JSON;
- application/x-www-form-urlencoded: `data=` holds the JSON or its base64 (PostHog's snippet);
- `ingestPrefixes: [/v1, /e7]`: every ingest path also answers under /e7.
"""

from __future__ import annotations

import base64
import gzip
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
import yaml
from helpers import ADMIN, WRITE_KEY, Server, basic, bearer, config_doc, start_server

from collector import app as app_module
from collector.errors import ConfigError
from collector.paths import DEFAULT_PATHS, EVENT_PATHS, RESERVED_PATHS, IngestPaths
from collector.settings import load

SERVER_KEY = "WK_SERVER_ONLY"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ORIGIN = {"Origin": "https://shop.example.com"}


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("bodies")
    doc = config_doc(ingestPrefixes=["/v1", "/e7"])
    doc["workspaces"][0]["sources"].append(
        {"id": "src_api", "name": "Back end", "writeKeys": [{"key": SERVER_KEY, "kind": "server"}]}
    )
    config = tmp / "collector.yaml"
    config.write_text(yaml.safe_dump(doc), encoding="utf-8")
    server = start_server(tmp, config, f"sqlite:///{tmp / 'events.db'}", env={"COLLECTOR_SQLITE_SYNCHRONOUS": "NORMAL"})
    yield server
    server.stop()


def message(**fields: Any) -> dict[str, Any]:
    return {"event": "Bought", "anonymousId": "anon-1", "messageId": "m-" + uuid.uuid4().hex} | fields


def stored(collector: Server, message_id: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{collector.url}/v1/events", params={"messageId": message_id}, headers=bearer(ADMIN))
    assert answer.status_code == 200, answer.text
    return [item["event"] for item in answer.json()["data"]]


def b64(value: dict[str, Any]) -> str:
    return base64.b64encode(orjson.dumps(value)).decode()


# --- no Content-Type, text/plain ----------------------------------------------------------------


@pytest.mark.parametrize("gzipped", [False, True])
def test_body_without_content_type_is_json_with_the_key_in_the_body_or_query(collector: Server, gzipped: bool) -> None:
    in_body = message(writeKey=WRITE_KEY)
    in_query = message()
    for sent, query in ((in_body, ""), (in_query, f"?writeKey={WRITE_KEY}")):
        body = gzip.compress(orjson.dumps(sent)) if gzipped else orjson.dumps(sent)
        headers = {"Content-Encoding": "gzip"} if gzipped else {}
        answer = httpx.post(f"{collector.url}/v1/t{query}", content=body, headers=headers)
        assert "content-type" not in answer.request.headers
        assert answer.status_code == 200 and answer.json() == {"success": True}, answer.text
        [event] = stored(collector, sent["messageId"])
        assert event["event"] == "Bought" and "writeKey" not in event


def test_text_plain_from_a_web_page_refuses_a_server_key(collector: Server) -> None:
    headers = {"Content-Type": "text/plain;charset=UTF-8"} | ORIGIN
    sent = message(writeKey=SERVER_KEY)
    answer = httpx.post(f"{collector.url}/v1/t", content=orjson.dumps(sent), headers=headers)
    assert answer.status_code == 403 and answer.json()["code"] == "server_key_in_browser"
    answer = httpx.post(f"{collector.url}/v1/t", content=orjson.dumps(sent))  # no Origin: a back end
    assert answer.status_code == 200
    browser = message(writeKey=WRITE_KEY)
    answer = httpx.post(f"{collector.url}/v1/t", content=orjson.dumps(browser), headers=headers)
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "*"


# --- application/x-www-form-urlencoded ------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["json", "base64", "base64-urlsafe"])
@pytest.mark.parametrize("gzipped", [False, True])
def test_form_body_with_data_is_stored_like_json(collector: Server, encoding: str, gzipped: bool) -> None:
    sent = message(writeKey=WRITE_KEY, properties={"name": "Crème brûlée & co", "n": 12345678901234567890})
    raw = orjson.dumps(sent)
    data = {
        "json": raw.decode(),
        "base64": base64.b64encode(raw).decode(),
        "base64-urlsafe": base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }[encoding]
    body = urlencode({"data": data}).encode()
    headers = FORM | ({"Content-Encoding": "gzip"} if gzipped else {})
    answer = httpx.post(f"{collector.url}/v1/t", content=gzip.compress(body) if gzipped else body, headers=headers)
    assert answer.status_code == 200, answer.text
    [event] = stored(collector, sent["messageId"])
    assert event["properties"] == {"name": "Crème brûlée & co", "n": 12345678901234567890}
    assert "writeKey" not in event


def test_form_body_key_from_a_field_the_query_or_basic(collector: Server) -> None:
    cases = [
        ({"data": b64(message()), "writeKey": WRITE_KEY}, "", {}),
        ({"data": b64(message())}, f"?writeKey={WRITE_KEY}", {}),
        ({"data": b64(message())}, "", basic(WRITE_KEY)),
    ]
    for fields, query, auth in cases:
        answer = httpx.post(f"{collector.url}/v1/track{query}", content=urlencode(fields), headers=FORM | auth)
        assert answer.status_code == 200, answer.text
    batch = {"batch": [message(type="track"), message(type="track")], "writeKey": WRITE_KEY}
    answer = httpx.post(f"{collector.url}/v1/batch", content=urlencode({"data": b64(batch)}), headers=FORM)
    assert answer.status_code == 200, answer.text
    assert all(stored(collector, m["messageId"]) for m in batch["batch"])


def test_form_body_from_a_web_page_refuses_a_server_key(collector: Server) -> None:
    body = urlencode({"data": b64(message()), "writeKey": SERVER_KEY})
    answer = httpx.post(f"{collector.url}/v1/t", content=body, headers=FORM | ORIGIN)
    assert answer.status_code == 403 and answer.json()["code"] == "server_key_in_browser"


def test_form_body_without_data_is_a_400_naming_the_field(collector: Server) -> None:
    for body in (urlencode({"writeKey": WRITE_KEY}), "data=", urlencode({"data": "!!not base64!!"})):
        answer = httpx.post(f"{collector.url}/v1/t", content=body, headers=FORM)
        assert answer.status_code == 400, answer.text
        error = answer.json()
        assert error["code"] == "invalid_parameter" and error["parameter"] == "data"
        assert answer.headers["content-type"] == "application/json"
    answer = httpx.post(f"{collector.url}/v1/t", content=b"", headers=FORM)
    assert answer.status_code == 400 and answer.json()["parameter"] == "data"


def test_json_sent_as_a_form_is_still_json(collector: Server) -> None:
    # Before form bodies were read, any Content-Type meant JSON; a client that mislabels keeps working.
    sent = message(writeKey=WRITE_KEY)
    answer = httpx.post(f"{collector.url}/v1/t", content=b"  " + orjson.dumps(sent), headers=FORM)
    assert answer.status_code == 200, answer.text


# --- ingest prefixes ----------------------------------------------------------------------------


def test_every_ingest_path_answers_under_an_alias_prefix(collector: Server) -> None:
    url = collector.url
    for path in ("/e7/t", "/e7/track", "/v1/t"):
        sent = message(writeKey=WRITE_KEY)
        assert httpx.post(url + path, content=orjson.dumps(sent)).status_code == 200
        assert stored(collector, sent["messageId"])
    for path in ("/e7/batch", "/e7/b", "/e7/import"):
        batch = {"batch": [message(type="track")], "writeKey": WRITE_KEY}
        assert httpx.post(url + path, content=orjson.dumps(batch)).status_code == 200, path
    for path in ("/e7/p", "/e7/page", "/e7/i", "/e7/identify", "/e7/g", "/e7/a", "/e7/s"):
        assert httpx.post(url + path, content=b"{}", headers=basic(WRITE_KEY)).status_code == 400  # reached: invalid
    for path in ("/e7/t", "/e7/pixel/track"):
        pixel = message()
        answer = httpx.get(url + path, params={"data": b64(pixel), "writeKey": WRITE_KEY})
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/gif", path
        assert stored(collector, pixel["messageId"])
    assert httpx.post(url + "/e7/m", content=b'{"series": []}').status_code == 200
    assert httpx.post(url + "/e8/t", content=b"{}").status_code == 404


def test_settings_answer_the_prefix_they_were_reached_on(collector: Server) -> None:
    host = collector.url.removeprefix("http://")
    for prefix in ("/v1", "/e7"):
        answer = httpx.get(f"{collector.url}{prefix}/projects/{WRITE_KEY}/settings")
        assert answer.status_code == 200
        segment = answer.json()["integrations"]["Segment.io"]
        assert segment["apiHost"] == f"{host}{prefix}"
        assert answer.json()["metrics"]["host"] == f"{host}{prefix}"


def test_default_prefix_serves_only_v1() -> None:
    assert load(None, environ={}).ingest_prefixes == ("/v1",)
    assert DEFAULT_PATHS.events == EVENT_PATHS  # the spec's own table, unchanged
    settings = load(None, environ={"COLLECTOR_INGEST_PREFIXES": "/v1, /e7,/a/b-c"})
    assert settings.ingest_prefixes == ("/v1", "/e7", "/a/b-c")
    table = IngestPaths.of(settings.ingest_prefixes)
    assert table.events["/a/b-c/batch"] == "batch" and table.events["/e7/t"] == "track"
    assert "/a/b-c/pixel/page" in table.pixels["page"]
    nested = IngestPaths.of(("/x", "/x/pixel"))  # /x + /pixel/t and /x/pixel + /t: one route
    assert nested.pixels["track"].count("/x/pixel/t") == 1 and nested.events["/x/pixel/t"] == "track"


@pytest.mark.parametrize(
    "prefix",
    ["e7", "/e7/", "/", "", "/v1/events", "/v1/events/x", "/health", "/ready", "/metrics", "/debugger/x",
     "/api/v1", "/track", "/identify", "/openapi.json", "/e 7", "/e7?x", "/../v1", "/a//b"],
)  # fmt: skip
def test_a_bad_prefix_is_a_config_error_naming_it(prefix: str, tmp_path: Path) -> None:
    settings = load(None, environ={"COLLECTOR_INGEST_PREFIXES": f"/v1,{prefix}" if prefix else ""})
    with pytest.raises(ConfigError) as raised:
        app_module.create_app(replace(settings, storage=f"sqlite:///{tmp_path / 'e.db'}"))
    assert (repr(prefix) if prefix else "at least one") in str(raised.value)


def test_serve_refuses_a_bad_prefix_at_start_up(tmp_path: Path) -> None:
    config = tmp_path / "collector.yaml"
    config.write_text(yaml.safe_dump(config_doc(ingestPrefixes=["/v1", "/health/x"])), encoding="utf-8")
    storage = f"sqlite:///{tmp_path / 'e.db'}"
    finished = subprocess.run(
        [sys.executable, "-m", "collector", "serve", "--config", str(config), "--storage", storage],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    assert finished.returncode == 2
    assert "ingestPrefixes: '/health/x' overlaps /health" in finished.stderr.decode()


def test_reserved_paths_cover_every_route_that_is_not_an_ingest_path() -> None:
    ingest = set(DEFAULT_PATHS.telemetry) | set(DEFAULT_PATHS.settings)
    ingest |= {p for paths in DEFAULT_PATHS.pixels.values() for p in paths}
    for route in app_module.routes():
        path = getattr(route, "path")  # noqa: B009 (Route, Mount: both have one)
        if path not in ingest:
            assert any(path == r or path.startswith(r + "/") for r in RESERVED_PATHS), path
