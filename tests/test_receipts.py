"""Delivery receipts against a real `collector serve` on SQLite, PostgreSQL and NATS: one receipt
per outcome (stored, duplicate, rejected, quarantined, suppressed, dropped), `wait=`, 404 past
what is kept, expiry after receiptRetention, erasure with a deletion, and the debugger's history
(which reads the same records; the page itself is tested in Chromium in test_browser.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import (
    ADMIN,
    QUARANTINE_KEY,
    WORKSPACE,
    WRITE_KEY,
    Server,
    basic,
    bearer,
    config_doc,
    make_client,
    scrape,
    start_server,
    value,
    write_config,
)

CONSENT_KEY = "WK_RECEIPT_CONSENT"
RETENTION_SECONDS = 3600


class Backend:
    def __init__(self, name: str, server: Server, sql: Any, nats_url: str | None = None) -> None:
        self.name, self.server, self.sql, self.nats_url = name, server, sql, nats_url

    def send(self, body: dict[str, Any], key: str = WRITE_KEY, path: str = "/v1/track") -> httpx.Response:
        return httpx.post(self.server.url + path, json=body, headers=basic(key), timeout=10)

    def receipts(self, message_id: str, **params: Any) -> httpx.Response:
        return httpx.get(
            f"{self.server.url}/v1/receipts/{message_id}", params=params, headers=bearer(ADMIN), timeout=40
        )

    def statuses(self, message_id: str) -> list[str]:
        answer = self.receipts(message_id, wait=5)
        assert answer.status_code == 200, answer.text
        return [receipt["status"] for receipt in answer.json()["receipts"]]


@pytest.fixture(scope="module", params=["sqlite", "postgres", "nats"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    from servers import start_nats, start_postgres

    directory = tmp_path_factory.mktemp(f"receipts-{request.param}")
    doc = config_doc()
    doc["workspaces"][0]["sources"].append(
        {"id": "src_consent", "writeKeys": [CONSENT_KEY], "privacy": {"consent": {"whenMissing": "drop"}}}
    )
    config = directory / "collector.yaml"
    config.write_text(yaml.safe_dump(doc), encoding="utf-8")
    env = {"COLLECTOR_RETENTION_INTERVAL_SECONDS": "0.3", "COLLECTOR_RECEIPT_RETENTION": f"{RETENTION_SECONDS}s"}
    cleanup: Any = None
    sql: Any = None
    nats_url = None
    extra: list[str] = []
    if request.param == "sqlite":
        database = directory / "events.db"
        storage = f"sqlite:///{database}"

        def sql(statement: str, *params: Any) -> None:
            import sqlite3

            with sqlite3.connect(database, timeout=10) as conn:
                conn.execute(statement.replace("%s", "?"), params)

    elif request.param == "postgres":
        cleanup = postgres = start_postgres()
        storage = postgres.url()

        def sql(statement: str, *params: Any) -> None:
            import psycopg

            with psycopg.connect(postgres.url(), autocommit=True) as conn:
                conn.execute(statement, params)  # type: ignore[arg-type]

    else:
        cleanup = nats = start_nats()
        storage = nats_url = nats.url()
        extra = ["--profiles", f"sqlite:///{directory / 'profiles.db'}"]  # suppressions need a ledger
    server = start_server(directory, config, storage, *extra, env=env, name=f"receipts-{request.param}")
    yield Backend(request.param, server, sql, nats_url)
    server.stop()
    if cleanup is not None:
        cleanup.remove()


def track(**fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Signed Up", "userId": "u-receipts", "messageId": str(uuid.uuid4()), **fields}


def test_one_receipt_per_outcome(backend: Backend) -> None:
    sent = track()
    assert backend.send(sent).status_code == 200
    assert backend.send(sent).status_code == 200  # a retry: answered 200, not stored again
    twice = track()
    assert backend.send({"batch": [twice, twice]}, path="/v1/batch").status_code == 200
    invalid = track()
    del invalid["event"]
    assert backend.send(invalid).status_code == 400
    assert backend.send(invalid, key=QUARANTINE_KEY).status_code == 200
    no_consent = track()
    assert backend.send(no_consent, key=CONSENT_KEY).status_code == 200
    suppressed_user = "u-suppressed-" + uuid.uuid4().hex[:8]
    made = httpx.post(
        backend.server.url + "/v1/suppressions",
        json={"workspaceId": WORKSPACE, "userId": suppressed_user},
        headers=bearer(ADMIN),
        timeout=10,
    )
    assert made.status_code in (200, 201), made.text
    suppressed = track(userId=suppressed_user)
    assert backend.send(suppressed).status_code == 200

    assert backend.statuses(sent["messageId"]) == ["stored", "duplicate"]
    assert backend.statuses(twice["messageId"]) == ["stored", "duplicate"]
    answer = backend.receipts(invalid["messageId"]).json()
    assert [r["status"] for r in answer["receipts"]] == ["rejected", "quarantined"]
    for receipt in answer["receipts"]:
        assert receipt["errors"] == [
            {"pointer": "/event", "keyword": "required", "message": '"event" is a required property'}
        ]
        assert receipt["workspaceId"] == WORKSPACE and receipt["messageId"] == invalid["messageId"]
    assert {r["sourceId"] for r in answer["receipts"]} == {"src_web", "src_q"}
    dropped = backend.receipts(no_consent["messageId"]).json()["receipts"]
    assert [(r["status"], r["policy"], r["sourceId"]) for r in dropped] == [
        ("dropped", "consent_missing", "src_consent")
    ]
    found = backend.receipts(suppressed["messageId"]).json()["receipts"]
    assert [(r["status"], r["policy"]) for r in found] == [("suppressed", "suppressed")]
    assert suppressed_user not in str(found)  # the receipt names the policy, never the identity
    for receipt in found + dropped:
        assert set(receipt) == {"status", "workspaceId", "sourceId", "messageId", "at", "policy"}
    narrowed = backend.receipts(sent["messageId"], workspaceId="ws_OtherWorkspace02")
    assert narrowed.status_code == 404


def test_wait_holds_the_answer_until_a_receipt_exists(backend: Backend) -> None:
    late = track()
    del late["event"]
    timer = threading.Timer(0.4, lambda: backend.send(late))
    timer.start()
    began = time.monotonic()
    answer = backend.receipts(late["messageId"], wait=10)
    timer.join()
    assert answer.status_code == 200, answer.text
    assert [r["status"] for r in answer.json()["receipts"]] == ["rejected"]
    assert 0.3 < time.monotonic() - began < 8


def test_unknown_message_id_is_404_naming_the_retention(backend: Backend) -> None:
    began = time.monotonic()
    answer = backend.receipts("never-sent-" + uuid.uuid4().hex, wait=0.5)
    assert time.monotonic() - began >= 0.5
    assert answer.status_code == 404
    assert answer.json()["code"] == "not_found" and "receiptRetention" in answer.json()["moreInfo"]
    assert "1 h" in answer.json()["moreInfo"]


def test_receipts_need_the_admin_token(backend: Backend) -> None:
    answer = httpx.get(f"{backend.server.url}/v1/receipts/anything", headers=basic(WRITE_KEY), timeout=10)
    assert answer.status_code == 401 and answer.json()["code"] == "unauthorized"


def test_receipts_expire_after_the_retention(backend: Backend) -> None:
    old, fresh = track(), track()
    for body in (old, fresh):
        del body["event"]
        assert backend.send(body).status_code == 400
    assert backend.statuses(old["messageId"]) == ["rejected"]
    if backend.nats_url is not None:  # JetStream expires them: the stream's max_age is the retention
        assert asyncio.run(_receipts_max_age(backend.nats_url)) == RETENTION_SECONDS
        return
    backend.sql("UPDATE receipts SET at = '2020-01-01T00:00:00.000Z' WHERE message_id = %s", old["messageId"])
    deadline = time.monotonic() + 10
    while backend.receipts(old["messageId"]).status_code != 404 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert backend.receipts(old["messageId"]).status_code == 404
    assert backend.statuses(fresh["messageId"]) == ["rejected"]


async def _receipts_max_age(url: str) -> float:
    import nats

    client = await nats.connect(url)
    try:
        info = await client.jetstream().stream_info("EVENTS_RECEIPTS")
        return float(info.config.max_age or 0)
    finally:
        await client.close()


def test_a_deletion_erases_the_receipts_that_hold_the_identity(backend: Backend) -> None:
    if backend.nats_url is not None:
        pytest.skip("NATS refuses deletions (test_privacy.py); its receipts expire with max_age")
    user = "u-erase-" + uuid.uuid4().hex[:8]
    rejected = track(userId=user)
    del rejected["event"]
    assert backend.send(rejected).status_code == 400
    assert backend.statuses(rejected["messageId"]) == ["rejected"]
    answer = httpx.post(
        backend.server.url + "/v1/deletions",
        json={"workspaceId": WORKSPACE, "userId": user},
        headers=bearer(ADMIN),
        timeout=10,
    )
    assert answer.status_code == 202, answer.text
    deadline = time.monotonic() + 30
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = httpx.get(
            f"{backend.server.url}/v1/deletions/{answer.json()['id']}", headers=bearer(ADMIN), timeout=10
        ).json()
        if status["status"] != "running":
            break
        time.sleep(0.2)
    assert status["status"] == "done" and status["receipts"] == 1, status
    assert backend.receipts(rejected["messageId"]).status_code == 404


def test_debugger_history_lists_recent_arrivals_of_every_kind(backend: Backend) -> None:
    stored, invalid = track(), track()
    del invalid["event"]
    assert backend.send(stored).status_code == 200
    assert backend.send(stored).status_code == 200
    assert backend.send(invalid).status_code == 400
    assert backend.send(invalid, key=QUARANTINE_KEY).status_code == 200
    answer = httpx.get(f"{backend.server.url}/debugger/history", params={"token": ADMIN, "limit": 20}, timeout=20)
    assert answer.status_code == 200, answer.text
    history = answer.json()
    assert int(history["streamFrom"]) > 0
    mine = [
        (e["status"], e["sourceId"])
        for e in history["data"]
        if e["messageId"] in (stored["messageId"], invalid["messageId"])
    ]
    assert mine == [("quarantined", "src_q"), ("rejected", "src_web"), ("duplicate", "src_web"), ("stored", "src_web")]
    by_status = {
        e["status"]: e for e in history["data"] if e["messageId"] in (stored["messageId"], invalid["messageId"])
    }
    assert by_status["stored"]["message"]["event"] == "Signed Up"  # the event as stored, for "copy as curl"
    assert by_status["rejected"]["message"] == invalid  # as sent (no write key was in it)
    assert by_status["quarantined"]["message"] == invalid
    times = [e["at"] for e in history["data"]]
    assert times == sorted(times, reverse=True) and len(times) <= 20
    only_q = httpx.get(
        f"{backend.server.url}/debugger/history", params={"token": ADMIN, "sourceId": "src_q"}, timeout=20
    ).json()["data"]
    assert only_q and {e["sourceId"] for e in only_q} == {"src_q"}
    assert httpx.get(f"{backend.server.url}/debugger/history", timeout=10).status_code == 401


def test_a_rejected_message_is_kept_without_its_write_key_and_big_ones_without_a_body(backend: Backend) -> None:
    keyed = track(writeKey=WRITE_KEY)
    del keyed["event"]
    assert httpx.post(backend.server.url + "/v1/track", json=keyed, timeout=10).status_code == 400
    big = track(properties={"blob": "x" * 70_000})  # over maxEventBytes, in a batch: that item is refused
    answer = backend.send({"batch": [big]}, path="/v1/batch")
    assert answer.status_code == 400 and answer.json()["errors"][0]["keyword"] == "maxEventBytes"
    assert [r["errors"][0]["keyword"] for r in backend.receipts(big["messageId"]).json()["receipts"]] == [
        "maxEventBytes"
    ]
    history = httpx.get(
        f"{backend.server.url}/debugger/history", params={"token": ADMIN, "limit": 50}, timeout=20
    ).json()["data"]
    shown = next(e for e in history if e["messageId"] == keyed["messageId"])
    assert "writeKey" not in shown["message"] and shown["message"]["userId"] == "u-receipts"
    assert next(e for e in history if e["messageId"] == big["messageId"])["message"] is None  # over 64 KB


def test_a_failed_receipt_write_leaves_the_answer_and_is_counted(tmp_path: Path) -> None:
    database = tmp_path / "events.db"
    with make_client(write_config(tmp_path / "collector.yaml"), f"sqlite:///{database}") as client:
        sent = track()
        assert client.post("/v1/track", json=sent, headers=basic(WRITE_KEY)).status_code == 200
        with sqlite3.connect(database) as conn:
            conn.execute("DROP TABLE receipts")  # every receipt write fails from now on
        assert client.post("/v1/track", json=sent, headers=basic(WRITE_KEY)).json() == {"success": True}
        invalid = track()
        del invalid["event"]
        answer = client.post("/v1/track", json=invalid, headers=basic(WRITE_KEY))
        assert answer.status_code == 400 and answer.json()["errors"][0]["pointer"] == "/event"
        samples = scrape(client)
        assert value(samples, "collector_receipts_failed_total", source="src_web") == 2
        found = client.get(f"/v1/receipts/{sent['messageId']}", headers=bearer(ADMIN))
        assert found.status_code == 503 and found.json()["code"] == "storage_unavailable"  # not a partial answer
