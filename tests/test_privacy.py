"""Privacy at the edge against a real `collector serve` on SQLite, PostgreSQL and NATS: IP policy,
Sec-GPC / DNT, consent, redaction, suppression, deletion during ingestion, retention, and a check
that the raw values reach no place a policy forbids (storage, quarantine, debugger, logs, error
bodies, metrics)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import ADMIN, Server, basic, bearer, config_doc, start_server

from collector.errors import ConfigError
from collector.pipeline.privacy import identity_digest, truncate_ip
from collector.pipeline.redaction import hash_value
from collector.settings import load, parse_retention

WS = "ws_PrivacyTest00001"
SECRET = "privacy-test-secret-0123"
RAW_IP = "198.51.100.77"
RAW_EMAIL = "jane.doe@example.com"
RAW_CARD = "4242 4242 4242 4242"
RAW_UA = "RawAgent/1.0 (privacy-test)"
RAW_DEVICE = "device-raw-1234"
RAW_VALUES = {"ip": RAW_IP, "email": RAW_EMAIL, "card": RAW_CARD, "userAgent": RAW_UA, "deviceId": RAW_DEVICE}
REDACT = [
    {"path": "properties.email", "action": "hash"},
    {"path": "context.traits.email", "action": "hash"},
    {"detect": "email", "action": "mask"},
    {"detect": "card", "action": "drop"},
]
SOURCES = {
    "WK_TRUNC": ("src_trunc", {"ip": "truncate"}, {}),
    "WK_IPDROP": ("src_ipdrop", {"ip": "drop"}, {}),
    "WK_SIGNALS": ("src_signals", {"globalPrivacyControl": "anonymize", "doNotTrack": "drop"}, {}),
    "WK_CONSENT": ("src_consent", {"consent": {"require": ["Analytics"], "whenMissing": "drop"}}, {}),
    "WK_REDACT": ("src_redact", {"redact": REDACT, "ip": "drop"}, {"invalidMessages": "quarantine"}),
    "WK_REDACT_STRICT": ("src_redact_strict", {"redact": REDACT, "ip": "drop"}, {}),
    "WK_PLAIN": ("src_plain", {}, {}),
}
RETENTION_KEY = "WK_RETAIN"


def privacy_config(path: Path, retention: bool) -> Path:
    sources: list[dict[str, Any]] = [
        {"id": source_id, "writeKeys": [key], **({"privacy": privacy} if privacy else {}), **extra}
        for key, (source_id, privacy, extra) in SOURCES.items()
    ]
    if retention:
        sources.append({"id": "src_retain", "writeKeys": [RETENTION_KEY], "privacy": {"retention": "1h"}})
    doc = config_doc()
    doc["workspaces"].append({"id": WS, "name": "Privacy", "privacy": {"hashSecret": SECRET}, "sources": sources})
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


class Backend:
    def __init__(self, name: str, server: Server, sql: Any) -> None:
        self.name, self.server, self.sql = name, server, sql
        self.errors: list[str] = []  # every error body the tests received

    @property
    def url(self) -> str:
        return self.server.url

    def send(self, key: str, body: dict[str, Any], path: str = "/v1/track", **headers: str) -> httpx.Response:
        answer = httpx.post(self.url + path, json=body, headers={**basic(key), **headers}, timeout=10)
        if answer.status_code != 200:
            self.errors.append(answer.text)
        return answer

    def read(self, **params: Any) -> list[dict[str, Any]]:
        answer = httpx.get(self.url + "/v1/events", params={"limit": 1000, **params}, headers=bearer(ADMIN), timeout=40)
        assert answer.status_code == 200, answer.text
        return [item["event"] for item in answer.json()["data"]]

    def read_all(self, **params: Any) -> list[dict[str, Any]]:
        """Every page of the read-back API."""
        found: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = httpx.get(
                self.url + "/v1/events",
                params={"limit": 1000, **params, **({"cursor": cursor} if cursor else {})},
                headers=bearer(ADMIN),
                timeout=40,
            ).json()
            found += [item["event"] for item in page["data"]]
            cursor = page["meta"]["nextCursor"]
            if not cursor:
                return found

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers=bearer(ADMIN), timeout=20, **kwargs)


@pytest.fixture(scope="module", params=["sqlite", "postgres", "nats"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    from servers import start_nats, start_postgres

    directory = tmp_path_factory.mktemp(f"privacy-{request.param}")
    config = privacy_config(directory / "collector.yaml", retention=request.param != "nats")
    env = {"COLLECTOR_RETENTION_INTERVAL_SECONDS": "0.5"}
    cleanup: Any = None
    sql: Any = None
    if request.param == "sqlite":
        database = directory / "events.db"
        storage, extra = f"sqlite:///{database}", []

        def sql(statement: str) -> None:
            import sqlite3

            with sqlite3.connect(database, timeout=10) as conn:
                conn.execute(statement)

    elif request.param == "postgres":
        cleanup = postgres = start_postgres()
        storage, extra = postgres.url(), []

        def sql(statement: str) -> None:
            import psycopg

            with psycopg.connect(postgres.url(), autocommit=True) as conn:
                conn.execute(statement)  # type: ignore[arg-type]

    else:
        cleanup = nats = start_nats()
        storage, extra = nats.url(), ["--profiles", f"sqlite:///{directory / 'profiles.db'}"]
    server = start_server(directory, config, storage, "--access-log", *extra, env=env, name=f"privacy-{request.param}")
    yield Backend(request.param, server, sql)
    server.stop()
    if cleanup is not None:
        cleanup.remove()


def track(user: str = "u-1", **fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Order Completed", "userId": user, "messageId": str(uuid.uuid4()), **fields}


def one(backend: Backend, message_id: str, wait: float = 5) -> dict[str, Any] | None:
    found = backend.read(messageId=message_id, wait=wait)
    return found[0] if found else None


def absent(backend: Backend, message_id: str) -> bool:
    """Not stored (the read waits a little, as a stored one would be there at once)."""
    return not backend.read(messageId=message_id, wait=0.3)


# --- IP ------------------------------------------------------------------------------------------


def test_truncate_ip_keeps_the_network_only() -> None:
    assert truncate_ip("203.0.113.77") == "203.0.113.0"
    assert truncate_ip("2001:db8:1234:5678::1") == "2001:db8:1234::"
    assert truncate_ip("::ffff:198.51.100.9") == "198.51.100.0"
    assert truncate_ip("not an ip") is None


def test_ip_truncate_and_drop(backend: Backend) -> None:
    sent = track(context={"ip": RAW_IP})
    assert backend.send("WK_TRUNC", sent).json() == {"success": True}
    assert one(backend, sent["messageId"])["context"]["ip"] == "198.51.100.0"  # type: ignore[index]
    peer = track()  # the peer's own address (127.0.0.1) is what enrichment would copy
    backend.send("WK_TRUNC", peer)
    assert one(backend, peer["messageId"])["context"]["ip"] == "127.0.0.0"  # type: ignore[index]
    for body in (track(context={"ip": RAW_IP}), track()):
        assert backend.send("WK_IPDROP", body).status_code == 200
        assert "ip" not in one(backend, body["messageId"])["context"]  # type: ignore[index]


# --- signals and consent ---------------------------------------------------------------------------


def test_global_privacy_control_anonymizes_and_do_not_track_drops(backend: Backend) -> None:
    context = {"ip": RAW_IP, "userAgent": RAW_UA, "device": {"id": RAW_DEVICE, "advertisingId": "ad-1", "type": "ios"}}
    sent = track(context=context)
    answer = backend.send("WK_SIGNALS", sent, **{"Sec-GPC": "1", "User-Agent": RAW_UA})
    assert answer.status_code == 200 and answer.json() == {"success": True}
    event = one(backend, sent["messageId"])
    assert event is not None
    assert "ip" not in event["context"] and "userAgent" not in event["context"]
    assert event["context"]["device"] == {"type": "ios"}  # ids gone, the rest kept
    assert event["userId"] == "u-1" and event["event"] == "Order Completed"
    dropped = track(context=context)
    answer = backend.send("WK_SIGNALS", dropped, DNT="1")
    assert answer.status_code == 200 and answer.json() == {"success": True}  # the client must not retry
    assert absent(backend, dropped["messageId"])
    plain = track(context={"ip": "192.0.2.1", "device": {"id": "device-kept"}})  # neither header: as sent
    backend.send("WK_SIGNALS", plain)
    assert one(backend, plain["messageId"])["context"]["device"]["id"] == "device-kept"  # type: ignore[index]


def consent(**preferences: bool) -> dict[str, Any]:
    """As analytics-next's consent integration sends it."""
    return {"consent": {"categoryPreferences": preferences}}


def test_consent_granted_refused_and_missing(backend: Backend) -> None:
    granted = track(context=consent(Analytics=True, Advertising=False))
    refused = track(context=consent(Analytics=False, Advertising=True))
    missing = track(context={"library": {"name": "analytics.js", "version": "next-1.70.0"}})
    for body in (granted, refused, missing):
        assert backend.send("WK_CONSENT", body).json() == {"success": True}
    assert one(backend, granted["messageId"]) is not None
    assert absent(backend, refused["messageId"]) and absent(backend, missing["messageId"])
    batch = {"batch": [track(context=consent(Analytics=True)), track(context=consent(Analytics=False))]}
    assert backend.send("WK_CONSENT", batch, path="/v1/batch").json() == {"success": True}
    assert one(backend, batch["batch"][0]["messageId"]) is not None
    assert absent(backend, batch["batch"][1]["messageId"])


# --- redaction ----------------------------------------------------------------------------------------


def test_redaction_hashes_masks_and_drops(backend: Backend) -> None:
    sent = track(properties={"email": RAW_EMAIL, "note": f"write to {RAW_EMAIL} please", "card": RAW_CARD})
    assert backend.send("WK_REDACT", sent).status_code == 200
    event = one(backend, sent["messageId"])
    assert event is not None
    assert event["properties"]["email"] == hash_value(SECRET.encode(), RAW_EMAIL)  # joins still work
    assert event["properties"]["note"] == "write to j***@example.com please"
    assert "card" not in event["properties"]
    order = track(properties={"orderId": "4242424242424241"})  # 16 digits, fails Luhn: no card
    backend.send("WK_REDACT", order)
    assert one(backend, order["messageId"])["properties"]["orderId"] == "4242424242424241"  # type: ignore[index]


def test_an_envelope_context_is_redacted_once_per_item(backend: Backend) -> None:
    items = [track(), track()]
    batch = {"batch": items, "context": {"traits": {"email": RAW_EMAIL}}}
    assert backend.send("WK_REDACT", batch, path="/v1/batch").status_code == 200
    expected = hash_value(SECRET.encode(), RAW_EMAIL)  # not the hash of the first item's hash
    for item in items:
        assert one(backend, item["messageId"])["context"]["traits"]["email"] == expected  # type: ignore[index]


def test_quarantine_and_error_bodies_get_the_redacted_message(backend: Backend) -> None:
    not_an_object = backend.send("WK_REDACT", {"batch": [f"mail {RAW_EMAIL}", track()]}, path="/v1/batch")
    assert not_an_object.status_code == 200  # the string is quarantined, redacted
    bad = {"type": "track", "userId": "u-1", "messageId": str(uuid.uuid4()), "properties": {"email": RAW_EMAIL}}
    bad["context"] = {"ip": RAW_IP}
    assert backend.send("WK_REDACT", bad).status_code == 200  # no event name: quarantined
    page = backend.admin("GET", "/v1/quarantine", params={"messageId": bad["messageId"], "wait": 5}).json()["data"]
    assert len(page) == 1 and page[0]["event"]["properties"]["email"].startswith("hmac-sha256:")
    assert "ip" not in page[0]["event"].get("context", {})
    refused = backend.send("WK_REDACT_STRICT", {**bad, "messageId": str(uuid.uuid4()), "properties": RAW_EMAIL})
    assert refused.status_code == 400 and refused.json()["code"] == "invalid_message"
    assert RAW_EMAIL not in refused.text


def test_raw_values_reach_no_place_a_policy_forbids(backend: Backend) -> None:
    """Runs after the policy tests above (file order) and reads every place their raw values could be."""
    stream = ""
    try:  # the replay comes at once; then the stream idles until its keep-alive: stop reading there
        with httpx.stream(
            "GET", backend.url + "/debugger/stream", params={"token": ADMIN}, headers={"Last-Event-ID": "0"}, timeout=2
        ) as answer:
            for chunk in answer.iter_text():
                stream += chunk
    except httpx.ReadTimeout:
        pass
    places = {
        "storage": httpx.get(
            backend.url + "/v1/events", params={"workspaceId": WS, "limit": 1000}, headers=bearer(ADMIN), timeout=40
        ).text,
        "quarantine": backend.admin("GET", "/v1/quarantine", params={"workspaceId": WS}).text,
        "debugger": stream,
        "logs": backend.server.log(),
        "error bodies": "\n".join(backend.errors),
        "metrics": backend.admin("GET", "/metrics").text,
    }
    assert "src_redact" in places["debugger"] and "status" in places["logs"]  # the places were read
    assert "collector_privacy_total" in places["metrics"]
    found = {(name, place) for place, text in places.items() for name, raw in RAW_VALUES.items() if raw in text}
    assert not found, found  # every raw value above was sent only to sources whose policy removes it
    print(f"\n[{backend.name}] {len(RAW_VALUES)} raw values absent from: {', '.join(places)}")


# --- suppression, deletion, retention ---------------------------------------------------------------


def test_suppression_stops_storage_until_removed(backend: Backend) -> None:
    user = f"supp-{uuid.uuid4().hex[:8]}"
    made = backend.admin("POST", "/v1/suppressions", json={"workspaceId": WS, "userId": user})
    assert made.status_code == 201, made.text
    record = made.json()
    assert record["status"] == "active" and user not in made.text
    assert record["identity"]["digest"] == identity_digest(SECRET.encode(), "userId", user)
    listed = backend.admin("GET", "/v1/suppressions", params={"workspaceId": WS}).json()["data"]
    assert record["id"] in [r["id"] for r in listed]
    blocked = track(user)
    assert backend.send("WK_PLAIN", blocked).json() == {"success": True}
    assert absent(backend, blocked["messageId"])
    assert backend.admin("DELETE", f"/v1/suppressions/{record['id']}").json()["status"] == "removed"
    allowed = track(user)
    backend.send("WK_PLAIN", allowed)
    assert one(backend, allowed["messageId"]) is not None


def test_bad_privacy_requests_name_the_field_and_echo_no_identity(backend: Backend) -> None:
    for body, field in (
        ({"workspaceId": "ws_nope", "userId": "secret-user"}, "workspaceId"),
        ({"workspaceId": WS}, "userId"),
        ({"workspaceId": WS, "userId": "secret-user", "extra": 1}, "extra"),
        ({"workspaceId": WS, "userId": "secret-user", "suppress": "yes"}, "suppress"),
    ):
        answer = backend.admin("POST", "/v1/deletions", json=body)
        assert answer.status_code == 400 and answer.json()["parameter"] == field, answer.text
        assert "secret-user" not in answer.text
    assert httpx.post(backend.url + "/v1/suppressions", json={"workspaceId": WS, "userId": "x"}).status_code == 401


def test_deletion_during_concurrent_ingestion(backend: Backend) -> None:
    target = f"gone-{uuid.uuid4().hex[:8]}"
    others = [f"kept-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    before = [track(target) for _ in range(2000)]
    for start in range(0, len(before), 100):
        assert backend.send("WK_PLAIN", {"batch": before[start : start + 100]}, path="/v1/batch").status_code == 200
    acked: list[dict[str, Any]] = []
    stop = threading.Event()

    def ingest(user: str) -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                items = [track(user) for _ in range(10)]
                if (
                    http.post(backend.url + "/v1/batch", json={"batch": items}, headers=basic("WK_PLAIN")).status_code
                    == 200
                ):
                    acked.extend(items)

    threads = [threading.Thread(target=ingest, args=(user,)) for user in others]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    warm = len(acked)
    time.sleep(1.0)
    rate_before = len(acked) - warm  # events/s in the second before the deletion
    began = time.monotonic()
    answer = backend.admin("POST", "/v1/deletions", json={"workspaceId": WS, "userId": target, "suppress": True})
    if backend.name == "nats":
        stop.set()
        for thread in threads:
            thread.join()
        assert answer.status_code == 501 and answer.json()["code"] == "deletion_unsupported", answer.text
        assert backend.read(userId=target, wait=0)  # nothing was claimed, nothing was deleted
        return
    assert answer.status_code == 202 and answer.json()["status"] == "running", answer.text
    deletion_id = answer.json()["id"]
    acked_at_start = len(acked)
    status: dict[str, Any] = {}
    while time.monotonic() - began < 30:
        status = backend.admin("GET", f"/v1/deletions/{deletion_id}").json()
        if status["status"] != "running":
            break
        time.sleep(0.1)
    elapsed = time.monotonic() - began
    after_deletion = [track(target) for _ in range(5)]
    assert backend.send("WK_PLAIN", {"batch": after_deletion}, path="/v1/batch").status_code == 200
    stop.set()
    for thread in threads:
        thread.join()
    assert status["status"] == "done", status
    assert status["events"] == len(before) and status["profiles"] == 0
    assert backend.read(userId=target, wait=0) == []
    for message in after_deletion:
        assert absent(backend, message["messageId"])
    stored_ids = {e["messageId"] for user in others for e in backend.read_all(userId=user)}
    assert {m["messageId"] for m in acked} <= stored_ids  # every other user's acknowledged event is there
    rate = (len(acked) - acked_at_start) / max(elapsed, 0.001)
    print(
        f"\n[{backend.name}] deletion: {status['events']} events deleted in {status['seconds']} s "
        f"(answered done after {elapsed:.1f} s); other users' ingestion meanwhile: {rate:.0f} events/s "
        f"(before it: {rate_before} events/s), {len(acked)} acknowledged, all stored"
    )
    audit = backend.admin("GET", "/v1/privacy/audit", params={"workspaceId": WS})
    assert target not in audit.text
    actions = {(r["action"], r["status"]) for r in audit.json()["data"]}
    assert ("deletion", "done") in actions and ("suppression", "active") in actions


def test_retention_deletes_expired_events_only(backend: Backend) -> None:
    if backend.sql is None:
        pytest.skip("NATS bounds age with the stream's max_age (test_retention_on_nats_is_refused)")
    old, fresh = track(), track()
    for body in (old, fresh):
        assert backend.send(RETENTION_KEY, body).status_code == 200
    kept_elsewhere = track()
    backend.send("WK_PLAIN", kept_elsewhere)
    assert one(backend, old["messageId"]) is not None
    backend.sql(f"UPDATE events SET received_at = '2020-01-01T00:00:00.000Z' WHERE message_id = '{old['messageId']}'")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not absent(backend, old["messageId"]):
        time.sleep(0.2)
    assert absent(backend, old["messageId"])
    assert one(backend, fresh["messageId"]) is not None and one(backend, kept_elsewhere["messageId"]) is not None


# --- where raw values could leak -------------------------------------------------------------------


def test_every_policy_is_counted_by_source_and_reason(backend: Backend) -> None:
    text = backend.admin("GET", "/metrics").text
    for source, reason in (
        ("src_trunc", "ip_truncated"),
        ("src_ipdrop", "ip_dropped"),
        ("src_signals", "gpc_anonymized"),
        ("src_signals", "dnt_dropped"),
        ("src_consent", "consent_refused"),
        ("src_consent", "consent_missing"),
        ("src_redact", "redacted"),
        ("src_plain", "suppressed"),
    ):
        assert f'collector_privacy_total{{reason="{reason}",source="{source}"}}' in text, (source, reason)


# --- configuration ------------------------------------------------------------------------------------


def test_retention_on_nats_is_refused_at_start_up(tmp_path: Path) -> None:
    from collector.app import build_runtime

    config = privacy_config(tmp_path / "c.yaml", retention=True)
    settings = load(config, environ={"COLLECTOR_STORAGE": "nats://127.0.0.1:1", "COLLECTOR_PROFILES": "sqlite:///p.db"})
    with pytest.raises(ConfigError, match="max_age"):
        build_runtime(settings)


def test_privacy_config_typos_and_bad_values_fail_start_up(tmp_path: Path) -> None:
    cases = [
        ({"ipp": "drop"}, "did you mean ip"),
        ({"ip": "hide"}, "ip"),
        ({"retention": "ninety days"}, "retention"),
        ({"redact": [{"path": "properties.email", "action": "shred"}]}, "action"),
    ]
    for privacy, expected in cases:
        doc = config_doc()
        doc["workspaces"][0]["privacy"] = privacy
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        with pytest.raises(ConfigError, match=expected):
            load(path, environ={})


def test_a_source_overrides_the_workspace_key_by_key(tmp_path: Path) -> None:
    doc = config_doc()
    doc["workspaces"][0]["privacy"] = {"ip": "drop", "doNotTrack": "drop", "hashSecret": SECRET}
    doc["workspaces"][0]["sources"][0]["privacy"] = {"ip": "truncate"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    settings = load(path, environ={})
    policy = settings.write_keys["WK_TEST"].privacy
    assert (policy.ip, policy.do_not_track, policy.hash_secret) == ("truncate", "drop", SECRET.encode())
    assert settings.write_keys["WK_QUARANTINE"].privacy.ip == "drop"
    assert parse_retention("90d", "r") == 90 * 86400 and parse_retention(None, "r") is None
