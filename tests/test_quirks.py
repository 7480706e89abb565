"""The real-world quirks corpus (fixtures/quirks.yaml) against a real collector process on every
backend: each body as an HTTP request, every stored event read back over the read-back API.

`python tests/test_quirks.py URL` prints the corpus table for any running collector whose test
source has write key WK_TEST and admin token adm_test (the closing notes' before/after table).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import ADMIN, WRITE_KEY, Server, basic, bearer, start_server, write_config

FIXTURES = Path(__file__).parent / "fixtures"
CORPUS: list[dict[str, Any]] = yaml.safe_load((FIXTURES / "quirks.yaml").read_text(encoding="utf-8"))["cases"]
CAPTURES = sorted((FIXTURES / "captures").glob("*.jsonl"))
STORED_OUTCOMES = ("stored", "flagged", "repaired")
_PLACEHOLDER = re.compile(r"\{\{(\w+)(?::(\d+))?\}\}")
_numbers = itertools.count(int.from_bytes(os.urandom(3), "big") * 1000)


def render(case: dict[str, Any], run: str) -> tuple[bytes, dict[str, str]]:
    """The case's exact request bytes, and the ids they were given."""
    ids = {"mid": f"m-{run}-{case['id']}", "uid": f"u-{run}-{case['id']}", "num": str(next(_numbers))}

    def fill(match: re.Match[str]) -> str:
        name, size = match.group(1), int(match.group(2) or 0)
        if name in ids:
            return ids[name]
        if name == "keys":
            return ",".join(f'"k{i}":{i}' for i in range(size))
        if name == "x":
            return "x" * size
        return match.group(0)  # fill and latin1: bytes, below

    text = _PLACEHOLDER.sub(fill, case["body"])
    body = text.replace("{{latin1}}", "\x00LATIN1\x00").encode("utf-8")
    body = body.replace(b"\x00LATIN1\x00", b"\xe9")
    wanted = re.search(rb"\{\{fill:(\d+)\}\}", body)
    if wanted:
        marker = wanted.group(0)
        body = body.replace(marker, b"x" * (int(wanted.group(1)) - (len(body) - len(marker))))
    return body, ids


def read_events(url: str, field: str, value: str, wait: float) -> list[dict[str, Any]]:
    answer = httpx.get(
        url + "/v1/events",
        params={field: value, "wait": wait, "limit": 1000},
        headers=bearer(ADMIN),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return [item["event"] for item in answer.json()["data"]]


def rules_of(event: dict[str, Any]) -> list[str]:
    violations = ((event.get("context") or {}).get("protocols") or {}).get("violations") or []
    return sorted(v["rule"] for v in violations if "rule" in v)


def field_of(event: dict[str, Any], dotted: str) -> Any:
    node: Any = event
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "$absent"
        node = node[part]
    return node


def expected_items(case: dict[str, Any]) -> list[dict[str, Any]]:
    if "items" in case:
        return list(case["items"])
    return [{key: case[key] for key in ("outcome", "rules", "expect") if key in case}]


def exchange(url: str, case: dict[str, Any], run: str) -> tuple[httpx.Response, list[dict[str, Any] | None]]:
    """Send one case; the stored event of each expected item (None where nothing was stored)."""
    body, ids = render(case, run)
    headers = basic(WRITE_KEY) | {"Content-Type": "application/json"}
    answer = httpx.post(url + case.get("path", "/v1/track"), content=body, headers=headers, timeout=30)
    items = expected_items(case)
    stores = any(item["outcome"] in STORED_OUTCOMES for item in items)
    wait = 5 if answer.is_success or stores else 0  # a 200 must be readable at once; wait= only absorbs a slow disk
    if case.get("find") == "userId":
        events = read_events(url, "userId", ids["uid"], wait)
        by_id = {e["messageId"]: e for e in events}
        if len(items) == 1 and "items" not in case:
            return answer, [events[0] if events else None]
        return answer, [by_id.get(f"{ids['mid']}-{index}") for index in range(len(items))] + (
            [None] if len(by_id) > len(items) else []
        )
    events = read_events(url, "messageId", ids["mid"], wait)
    assert len(events) <= 1, events
    return answer, [events[0] if events else None]


def observed_outcome(item: dict[str, Any], event: dict[str, Any] | None) -> str:
    if event is None:
        return "rejected"
    rules = rules_of(event)
    if not rules:
        return "stored"
    repaired = {"loneSurrogate", "nulCharacter", "nonFiniteNumber"}
    return "repaired" if any(r in repaired or "Timestamp" in r for r in rules) else "flagged"


def check_case(url: str, case: dict[str, Any], run: str) -> None:
    answer, events = exchange(url, case, run)
    items = expected_items(case)
    status = case.get("status", 400 if any(i["outcome"] == "rejected" for i in items) else 200)
    assert answer.status_code == status, answer.text[:500]
    if status >= 400:
        body = answer.json()  # the one error shape, naming the field
        assert body["status"] == status and body["code"]
    assert len(events) == len(items), f"more events stored than sent: {events}"
    sent = _sent_messages(case, run)
    for index, (item, event) in enumerate(zip(items, events, strict=True)):
        where = f"item {index}"
        if item["outcome"] == "rejected":
            assert event is None, f"{where}: stored although it breaks the contract: {event}"
            continue
        assert event is not None, f"{where}: not stored"
        assert rules_of(event) == sorted(item.get("rules", [])), f"{where}: {event.get('context')}"
        for dotted, value in (item.get("expect") or {}).items():
            wanted = event["receivedAt"] if value == "$receivedAt" else value
            assert field_of(event, dotted) == wanted, f"{where}: {dotted}"
        if item["outcome"] in ("stored", "flagged") and sent is not None:
            message = sent[index]
            for name in ("event", "name", "properties", "traits"):
                if name in message:
                    assert event[name] == message[name], f"{where}: {name} not stored as sent"


def _sent_messages(case: dict[str, Any], run: str) -> list[dict[str, Any]] | None:
    """The messages as sent, where the body is plain JSON (the stdlib keeps big integers exact)."""
    try:
        payload = json.loads(render(case, run)[0])
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    return payload["batch"] if isinstance(payload.get("batch"), list) else [payload]


# --- real servers, one per backend -------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgres", "nats"])
def collector(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from servers import start_nats, start_postgres

    directory = tmp_path_factory.mktemp(f"quirks-{request.param}")
    config = write_config(directory / "collector.yaml")
    cleanup: Any = None
    if request.param == "sqlite":
        storage, extra = f"sqlite:///{directory / 'events.db'}", []
    elif request.param == "postgres":
        cleanup = postgres = start_postgres()
        storage, extra = postgres.url(), []
    else:
        cleanup = nats = start_nats()
        storage, extra = nats.url(), ["--profiles", f"sqlite:///{directory / 'profiles.db'}"]
    server = start_server(directory, config, storage, *extra, name=f"quirks-{request.param}")
    yield server
    server.stop()
    if cleanup is not None:
        cleanup.remove()


@pytest.fixture(scope="module")
def run_id() -> str:
    return os.urandom(4).hex()


@pytest.mark.parametrize("case", CORPUS, ids=[c["id"] for c in CORPUS])
def test_quirk(collector: Server, case: dict[str, Any], run_id: str) -> None:
    check_case(collector.url, case, run_id)


@pytest.mark.parametrize("capture", CAPTURES, ids=[c.stem for c in CAPTURES])
def test_capture_is_stored_as_sent(collector: Server, capture: Path) -> None:
    """What analytics-next, analytics-node and analytics-python really sent: stored, no violations."""
    sent = []
    for line in capture.read_text().splitlines():
        request = json.loads(line)
        if request["method"] != "POST":
            continue
        headers = {k: v for k, v in request["headers"] if k.lower() not in ("host", "content-length", "connection")}
        answer = httpx.post(collector.url + request["path"], content=request["body"].encode(), headers=headers)
        assert answer.status_code == 200 and answer.json() == {"success": True}
        body = json.loads(request["body"])
        if request["path"] != "/v1/m":
            sent += body["batch"] if "batch" in body else [body]
    assert sent
    for message in sent:
        [event] = read_events(collector.url, "messageId", message["messageId"], 5)
        assert rules_of(event) == []
        for name in ("event", "name", "properties", "traits"):
            if name in message:
                assert event[name] == message[name]


def test_corpus_is_large_and_covers_every_outcome() -> None:
    outcomes = [item["outcome"] for case in CORPUS for item in expected_items(case)]
    assert len(CORPUS) + len(CAPTURES) >= 40
    assert {"stored", "flagged", "repaired", "rejected"} <= set(outcomes)
    assert len({case["id"] for case in CORPUS}) == len(CORPUS)


# --- the corpus table, for any collector --------------------------------------------------------


def table(url: str) -> str:
    run = os.urandom(4).hex()
    rows = ["| case | expected | observed | status |", "| --- | --- | --- | --- |"]
    lost = 0
    for case in CORPUS:
        answer, events = exchange(url, case, run)
        items = expected_items(case)
        expected = ", ".join(item["outcome"] for item in items) or "(nothing)"
        observed = ", ".join(observed_outcome(i, e) for i, e in zip(items, events, strict=False)) or "(nothing)"
        lost += sum(1 for i, e in zip(items, events, strict=False) if i["outcome"] in STORED_OUTCOMES and e is None) + (
            1 if not items and not answer.is_success else 0
        )
        rows.append(f"| {case['id']} | {expected} | {observed} | {answer.status_code} |")
    rows.append(f"\nstorable bodies lost: {lost}")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(sys.argv[1].rstrip("/")))
