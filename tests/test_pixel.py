"""Pixel beacons: GET with base64 JSON in `data=` is stored like a POST and answered with a 1x1 GIF."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from helpers import QUARANTINE_KEY, WRITE_KEY, stored
from starlette.testclient import TestClient

GIF_HEADER = b"GIF89a\x01\x00\x01\x00"  # signature, then width 1 and height 1 (little-endian)


def encoded(message: dict[str, Any], urlsafe: bool = False, padded: bool = True) -> str:
    raw = orjson.dumps(message)
    text = (base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)).decode()
    return text if padded else text.rstrip("=")


def test_track_pixel_is_stored_like_a_post_and_answers_a_gif(client: TestClient) -> None:
    message = {"event": "Email Opened", "userId": "u1", "properties": {"campaign": "nov"}, "messageId": "px-1"}
    answer = client.get("/v1/t", params={"data": encoded(message), "writeKey": WRITE_KEY})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/gif"
    assert answer.content.startswith(GIF_HEADER) and answer.content.endswith(b";")
    assert "no-store" in answer.headers["cache-control"]
    [event] = stored(client, messageId="px-1")
    assert event["type"] == "track" and event["event"] == "Email Opened"
    assert event["properties"] == {"campaign": "nov"}
    assert event["receivedAt"] and event["context"]["ip"] == "203.0.113.7"  # enriched like any POST


def test_all_pixel_paths_and_base64_flavours(client: TestClient) -> None:
    cases = [
        ("/v1/track", {"event": "A", "anonymousId": "x", "messageId": "px-a"}, True, False),
        ("/v1/pixel/track", {"event": "B", "anonymousId": "x", "messageId": "px-b"}, False, False),
        ("/v1/page", {"name": "Home", "anonymousId": "x", "messageId": "px-c"}, True, True),
        ("/v1/p", {"anonymousId": "x", "messageId": "px-d", "writeKey": WRITE_KEY}, False, True),
        ("/v1/pixel/page", {"anonymousId": "x", "messageId": "px-e"}, False, False),
    ]
    for path, message, urlsafe, padded in cases:
        params = {"data": encoded(message, urlsafe, padded)}
        if "writeKey" not in message:
            params["writeKey"] = WRITE_KEY
        answer = client.get(path, params=params)
        assert answer.status_code == 200, (path, answer.text)
    events = {e["messageId"]: e for e in stored(client)}
    assert {k: v["type"] for k, v in events.items()} == {
        "px-a": "track",
        "px-b": "track",
        "px-c": "page",
        "px-d": "page",
        "px-e": "page",
    }
    assert "writeKey" not in events["px-d"]


def test_unescaped_plus_in_data_still_decodes(client: TestClient) -> None:
    # This body's standard base64 has a "+", which an unencoded query turns into a space.
    message = {"event": "Opened>>>", "anonymousId": "x", "messageId": "px-plus"}
    data = encoded(message)
    assert "+" in data
    answer = client.get(f"/v1/t?writeKey={WRITE_KEY}&data={data}")
    assert answer.status_code == 200, answer.text
    assert stored(client, messageId="px-plus")[0]["event"] == "Opened>>>"


def test_pixel_errors_are_json_naming_the_problem(client: TestClient) -> None:
    good = encoded({"event": "E", "anonymousId": "x"})
    missing = client.get("/v1/t", params={"writeKey": WRITE_KEY})
    assert missing.status_code == 400 and missing.json()["parameter"] == "data"
    garbage = client.get("/v1/t", params={"writeKey": WRITE_KEY, "data": "!!not base64!!"})
    assert garbage.status_code == 400 and garbage.json()["parameter"] == "data"
    not_json = client.get("/v1/t", params={"writeKey": WRITE_KEY, "data": base64.b64encode(b"[1,2").decode()})
    assert not_json.status_code == 400 and not_json.json()["code"] == "invalid_json"
    no_key = client.get("/v1/t", params={"data": good})
    assert no_key.status_code == 401
    bad_key = client.get("/v1/t", params={"data": good, "writeKey": "WK_NOPE"})
    assert bad_key.status_code == 401
    invalid = client.get("/v1/t", params={"writeKey": WRITE_KEY, "data": encoded({"anonymousId": "x"})})
    assert invalid.status_code == 400
    assert invalid.json()["errors"][0]["pointer"] in ("", "/event")
    wrong_type = client.get("/v1/t", params={"writeKey": WRITE_KEY, "data": encoded({"type": "identify"})})
    assert wrong_type.status_code == 400 and wrong_type.json()["errors"][0]["pointer"] == "/type"
    huge = client.get("/v1/t", params={"writeKey": WRITE_KEY, "data": "A" * 50_000})
    assert huge.status_code == 413 and huge.json()["limit"] == "maxEventBytes"
    for answer in (missing, garbage, not_json, no_key, invalid, huge):
        assert answer.headers["content-type"] == "application/json"
    assert stored(client) == []


def test_quarantining_source_keeps_invalid_pixels_aside(client: TestClient) -> None:
    answer = client.get("/v1/t", params={"writeKey": QUARANTINE_KEY, "data": encoded({"anonymousId": "x"})})
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/gif"
    assert stored(client) == []


def test_duplicate_pixel_is_stored_once(client: TestClient) -> None:
    params = {"writeKey": WRITE_KEY, "data": encoded({"event": "Open", "anonymousId": "x", "messageId": "px-dup"})}
    assert client.get("/v1/t", params=params).status_code == 200
    assert client.get("/v1/t", params=params).status_code == 200
    assert len(stored(client, messageId="px-dup")) == 1
