"""Tracking plans: each enforcement on single events and mixed batches, versions, hot reload, and the
plan CLI (lint, check, infer, diff)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from helpers import ADMIN, basic, bearer, config_doc, make_client, stored
from starlette.testclient import TestClient

from collector import plan_tools
from collector.pipeline.plans import check
from collector.schema.dsl import SpecError
from collector.schema.plans import load_plans

ROOT = Path(__file__).resolve().parent.parent
SHOP = ROOT / "spec" / "plans" / "shop.yaml"
CAPTURES = Path(__file__).parent / "fixtures" / "captures"
KEYS = {mode: f"WK_PLAN_{mode.upper()}" for mode in ("allow", "omit", "quarantine", "reject")}


@pytest.fixture
def plans_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "plans"
    directory.mkdir()
    shutil.copy(SHOP, directory / "shop.yaml")
    return directory


@pytest.fixture
def client(tmp_path: Path, plans_dir: Path) -> Iterator[TestClient]:
    doc = config_doc()
    doc["workspaces"][0]["sources"] += [
        {"id": f"src_{mode}", "writeKeys": [key], "trackingPlan": "shop", "planEnforcement": mode}
        for mode, key in KEYS.items()
    ]
    config = tmp_path / "plan-config.yaml"
    config.write_text(yaml.safe_dump(doc))
    with make_client(config, f"sqlite:///{tmp_path / 'plans.db'}", COLLECTOR_PLANS_DIR=str(plans_dir)) as test_client:
        yield test_client


ORDER_OK = {"event": "Order Completed", "userId": "u", "properties": {"order_id": "o1", "revenue": 10.5}}
ORDER_BAD = {"event": "Order Completed", "userId": "u", "properties": {"order_id": 7, "revenue": 3, "note": "hi"}}
SIGNUP_PASSWORD = {"event": "Signed Up", "userId": "u", "properties": {"method": "email", "password": "hunter2"}}


def send(client: TestClient, mode: str, path: str, body: dict[str, Any]) -> Any:
    return client.post(path, content=orjson.dumps(body), headers=basic(KEYS[mode]))


def protocols(client: TestClient, message_id: str) -> dict[str, Any]:
    [event] = stored(client, messageId=message_id)
    return event["context"]["protocols"]  # type: ignore[no-any-return]


def test_allow_stores_and_attaches_violations(client: TestClient) -> None:
    assert send(client, "allow", "/v1/track", ORDER_BAD | {"messageId": "a1"}).status_code == 200
    [event] = stored(client, messageId="a1")
    assert event["properties"] == ORDER_BAD["properties"]
    assert event["context"]["protocols"]["trackingPlan"] == "shop"
    assert event["context"]["protocols"]["violations"] == [
        {"type": "Invalid Type", "field": "properties.order_id", "description": '7 is not of type "string"'}
    ]
    assert "omitted" not in event["context"]["protocols"]
    assert client.app.state.runtime.counters[("plan_violations", "src_allow")] == 1  # type: ignore[attr-defined]


def test_omit_drops_offending_properties_and_records_them(client: TestClient) -> None:
    assert send(client, "omit", "/v1/track", SIGNUP_PASSWORD | {"messageId": "o1"}).status_code == 200
    [event] = stored(client, messageId="o1")
    assert event["properties"] == {"method": "email"}
    assert event["context"]["protocols"]["omitted"] == ["properties.password"]
    assert event["context"]["protocols"]["violations"] == [
        {
            "type": "Forbidden Property",
            "field": "properties.password",
            "description": "password is forbidden by plan shop",
        }
    ]


def test_omit_keeps_events_whose_violation_cannot_be_omitted(client: TestClient) -> None:
    missing = {"event": "Order Completed", "userId": "u", "properties": {"order_id": "o2"}, "messageId": "o2"}
    assert send(client, "omit", "/v1/track", missing).status_code == 200
    record = protocols(client, "o2")
    assert record["violations"][0]["type"] == "Required" and record["violations"][0]["field"] == "properties.revenue"
    assert "omitted" not in record


def test_quarantine_keeps_violators_aside_with_their_errors(client: TestClient) -> None:
    batch = {
        "batch": [
            ORDER_OK | {"type": "track", "messageId": "q-ok"},
            ORDER_BAD | {"type": "track", "messageId": "q-bad"},
        ]
    }
    assert send(client, "quarantine", "/v1/batch", batch).status_code == 200
    assert [e["messageId"] for e in stored(client)] == ["q-ok"]
    held = client.get("/v1/quarantine", headers=bearer(ADMIN)).json()["data"]
    assert [item["messageId"] for item in held] == ["q-bad"]
    assert (
        held[0]["errors"][0]["violation"] == "Invalid Type"
        and held[0]["errors"][0]["pointer"] == "/properties/order_id"
    )


def test_reject_answers_400_per_event_and_stores_the_rest(client: TestClient) -> None:
    batch = {
        "batch": [
            ORDER_OK | {"type": "track", "messageId": "r-ok"},
            SIGNUP_PASSWORD | {"type": "track", "messageId": "r-pw"},
            {"type": "track", "userId": "u", "messageId": "r-spec"},  # base spec violation: no event name
            {"type": "track", "event": "Unplanned Thing", "userId": "u", "messageId": "r-unplanned"},
        ]
    }
    answer = send(client, "reject", "/v1/batch", batch)
    assert answer.status_code == 400
    body = answer.json()
    assert body["accepted"] == 2 and body["rejected"] == 2
    assert [(e["index"], e["pointer"]) for e in body["errors"]] == [(1, "/properties/password"), (2, "/event")]
    assert sorted(e["messageId"] for e in stored(client)) == ["r-ok", "r-unplanned"]  # unplannedEvents: allow
    single = send(client, "reject", "/v1/t", ORDER_BAD)
    assert single.status_code == 400 and single.json()["errors"][0]["violation"] == "Invalid Type"


def test_identify_traits_are_planned_too(client: TestClient) -> None:
    answer = send(client, "reject", "/v1/identify", {"userId": "u", "traits": {"plan": "gold", "email": "x@y.z"}})
    assert answer.status_code == 400
    assert answer.json()["errors"][0]["pointer"] == "/traits/plan"
    assert send(client, "reject", "/v1/identify", {"userId": "u", "traits": {"plan": "pro"}}).status_code == 200


@pytest.mark.parametrize(
    ("version", "properties", "ok"),
    [
        (None, {"order_id": "o", "revenue": 1}, True),  # missing version → the oldest (v1)
        (1, {"order_id": "o", "revenue": 1}, True),
        (2, {"order_id": "o", "revenue": 1}, False),  # v2 also requires checkout_id and currency
        (2, {"order_id": "o", "revenue": 1, "checkout_id": "c", "currency": "EUR"}, True),
        (7, {"order_id": "o", "revenue": 1}, True),  # unknown version → the oldest
    ],
)
def test_event_versions_pick_their_schema(
    client: TestClient, version: int | None, properties: dict[str, Any], ok: bool
) -> None:
    body: dict[str, Any] = {"event": "Order Completed", "userId": "u", "properties": properties}
    if version is not None:
        body["context"] = {"protocols": {"event_version": version}}
    assert send(client, "reject", "/v1/track", body).status_code == (200 if ok else 400)


def test_an_edited_plan_is_enforced_within_a_second(client: TestClient, plans_dir: Path) -> None:
    body = {"event": "Products Searched", "userId": "u", "properties": {"query": "shoes", "page": "2"}}
    assert send(client, "reject", "/v1/track", body).status_code == 200
    plan = yaml.safe_load((plans_dir / "shop.yaml").read_text())
    plan["events"]["Products Searched"]["properties"]["page"] = {"type": "number"}
    (plans_dir / "shop.yaml").write_text(yaml.safe_dump(plan))
    deadline = time.monotonic() + 1.0
    status = 200
    while time.monotonic() < deadline and status == 200:
        status = send(client, "reject", "/v1/track", body).status_code
        time.sleep(0.05)
    assert status == 400, "the edited plan was not enforced within a second"
    # a broken edit keeps the last good plan in force
    (plans_dir / "shop.yaml").write_text("plan: shop\nevents: [not, a, mapping\n")
    time.sleep(0.5)
    assert send(client, "reject", "/v1/track", body).status_code == 400
    assert send(client, "reject", "/v1/track", body | {"properties": {"query": "s", "page": 2}}).status_code == 200


def test_unplanned_property_policies(tmp_path: Path, plans_dir: Path) -> None:
    plan = yaml.safe_load((plans_dir / "shop.yaml").read_text())
    plan["unplannedProperties"] = "omit"
    (plans_dir / "shop.yaml").write_text(yaml.safe_dump(plan))
    plans, _ = load_plans(plans_dir)
    from collector.pipeline.plans import enforce

    message = {
        "type": "track",
        "event": "Products Searched",
        "userId": "u",
        "properties": {"query": "q", "x": 1, "y": 2},
    }
    outcome = enforce(plans["shop"], "allow", [(0, message)])
    assert outcome.kept[0][1]["properties"] == {"query": "q"}
    assert outcome.kept[0][1]["context"]["protocols"]["omitted"] == ["properties.x", "properties.y"]

    plan["unplannedProperties"], plan["unplannedEvents"] = "violation", "violation"
    (plans_dir / "shop.yaml").write_text(yaml.safe_dump(plan))
    plans, _ = load_plans(plans_dir)
    message = {"type": "track", "event": "Products Searched", "userId": "u", "properties": {"query": "q", "x": 1}}
    unplanned = {"type": "track", "event": "Mystery", "userId": "u"}
    outcome = enforce(plans["shop"], "reject", [(0, message), (1, unplanned)])
    assert [(i, [e["violation"] for e in errors]) for i, _m, errors in outcome.rejected] == [
        (0, ["Unplanned Property"]),
        (1, ["Unplanned Event"]),
    ]


def test_a_source_naming_a_missing_plan_fails_start_up(tmp_path: Path) -> None:
    from collector.app import create_app
    from collector.errors import ConfigError
    from collector.settings import load

    doc = config_doc()
    doc["workspaces"][0]["sources"][0]["trackingPlan"] = "nope"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="tracking plans not found.*nope"):
        create_app(load(config, environ={"COLLECTOR_STORAGE": f"sqlite:///{tmp_path / 'x.db'}"}))


# --- the plan CLI ---------------------------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", "plan", *args], capture_output=True, text=True, timeout=60
    )


def test_lint_accepts_the_sample_and_names_problems(tmp_path: Path) -> None:
    assert run("lint").returncode == 0
    (tmp_path / "a.yaml").write_text("plan: a\nevents:\n  X:\n    properties: {p: {type: money}}\n")
    result = run("--plans-dir", str(tmp_path), "lint")
    assert result.returncode == 1 and "unknown type 'money'" in result.stderr
    (tmp_path / "a.yaml").write_text("plan: a\nevents:\n  X: {}\n  X: {}\n")
    assert "duplicate key 'X'" in run("--plans-dir", str(tmp_path), "lint").stderr
    (tmp_path / "a.yaml").write_text("plan: a\n")
    (tmp_path / "b.yaml").write_text("plan: a\n")
    assert "also defined in a.yaml" in run("--plans-dir", str(tmp_path), "lint").stderr


def test_check_prints_violations_by_event_and_field(tmp_path: Path) -> None:
    recorded = tmp_path / "events.jsonl"
    lines = [
        ORDER_OK | {"type": "track"},
        ORDER_BAD | {"type": "track"},
        ORDER_BAD | {"type": "track"},
        SIGNUP_PASSWORD | {"type": "track"},
        {"type": "track", "userId": "u"},
    ]
    recorded.write_text("\n".join(orjson.dumps(line).decode() for line in lines))
    result = run("check", str(recorded), "--plan", "shop")
    assert result.returncode == 1
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["Order", "Completed", "properties.order_id", "Invalid", "Type", "2"] in rows
    assert ["Signed", "Up", "properties.password", "Forbidden", "Property", "1"] in rows
    assert ["None", "event", "Spec:", "required", "1"] in rows
    assert "5 events checked, 4 violations" in result.stdout


def test_infer_drafts_a_plan_that_accepts_the_recorded_traffic(tmp_path: Path) -> None:
    recorded = tmp_path / "traffic.jsonl"
    with recorded.open("w") as out:
        for capture in CAPTURES.glob("*.jsonl"):
            for line in capture.read_text().splitlines():
                request = orjson.loads(line)
                if request["method"] == "POST" and request["path"] != "/v1/m":
                    out.write(request["body"].replace("\n", " ") + "\n")
    result = run("infer", str(recorded), "--name", "observed")
    assert result.returncode == 0, result.stderr
    plan = yaml.safe_load(result.stdout)
    assert plan["events"]["Course Clicked"]["properties"]["revenue"] == {"type": "number", "required": True}
    # strictest policies: anything the traffic did not show would now be a violation
    plan["unplannedEvents"] = plan["unplannedProperties"] = "violation"
    strict = tmp_path / "plans"
    strict.mkdir()
    (strict / "observed.yaml").write_text(yaml.safe_dump(plan))
    plans, _ = load_plans(strict)
    report = plan_tools.check_file(recorded, plans["observed"])
    assert report.events >= 15 and report.rows == []
    # traffic unlike what was recorded is caught: currency was in every Course Clicked
    changed = {"type": "track", "event": "Course Clicked", "userId": "u", "properties": {"title": "t", "revenue": 5}}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(orjson.dumps(changed).decode())
    assert plan_tools.check_file(bad, plans["observed"]).rows == [
        ("Course Clicked", "properties.currency", "Required", 1)
    ]


def test_diff_flags_a_removed_required_property_as_breaking(tmp_path: Path) -> None:
    old = yaml.safe_load(SHOP.read_text())
    new = yaml.safe_load(SHOP.read_text())
    del new["events"]["Order Refunded"]["properties"]["order_id"]  # required
    new["events"]["Order Refunded"]["properties"]["reason"] = {"type": "string"}  # new optional
    new["events"]["Signed Up"]["properties"]["method"]["enum"].append("github")  # widened enum
    new["events"]["Coupon Applied"]["properties"]["discount"]["type"] = "string"  # type change
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    (tmp_path / "new.yaml").write_text(yaml.safe_dump(new))
    changes = plan_tools.diff(tmp_path / "old.yaml", tmp_path / "new.yaml")
    assert (
        "breaking",
        "events.Order Refunded.properties.order_id: required property removed (consumers relied on it)",
    ) in changes
    assert ("compatible", "events.Order Refunded.properties.reason: added") in changes
    assert any(kind == "compatible" and "method: enum" in text for kind, text in changes)
    assert any(kind == "breaking" and "discount: type" in text for kind, text in changes)
    result = run("diff", str(tmp_path / "old.yaml"), str(tmp_path / "new.yaml"))
    assert result.returncode == 1 and "2 breaking" in result.stdout
    same = run("diff", str(SHOP), str(SHOP))
    assert same.returncode == 0 and "0 changes, 0 breaking" in same.stdout


def test_broken_plan_file_is_a_spec_error(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("plan: x\nunplannedEvents: block\n")
    with pytest.raises(SpecError, match="unplannedEvents must be one of"):
        load_plans(tmp_path)


def test_violations_are_counted_in_metrics(client: TestClient) -> None:
    assert send(client, "allow", "/v1/track", ORDER_BAD).status_code == 200
    assert send(client, "omit", "/v1/track", SIGNUP_PASSWORD).status_code == 200
    text = client.get("/metrics", headers=bearer(ADMIN)).text
    assert 'collector_plan_violations_total{source="src_allow"} 1.0' in text
    assert 'collector_plan_violations_total{source="src_omit"} 1.0' in text


def test_the_load_test_traffic_follows_the_sample_plan() -> None:
    sys.path.insert(0, str(ROOT / "loadtests"))
    try:
        import payloads
    finally:
        sys.path.remove(str(ROOT / "loadtests"))
    plans, _ = load_plans(SHOP.parent)
    planned = 0
    for name, properties in payloads.TRACK_EVENTS:
        message = {"type": "track", "event": name, "userId": "u", "properties": dict(properties)}
        assert check(plans["shop"], message).violations == [], name
        planned += name in plans["shop"].events
    assert planned >= 3
