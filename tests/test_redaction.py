"""Redaction rules: what each detector finds and leaves alone, path rules with `*`, the three
actions' output, the structural fields no rule touches, and config errors that name the rule."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
from typing import Any

import pytest

from collector.errors import ConfigError
from collector.pipeline.redaction import (
    ACTIONS,
    DETECTORS,
    Action,
    Detector,
    Redactor,
    RedactRule,
    hash_value,
    iban_valid,
    luhn_valid,
    mask_value,
    parse_rules,
)

SECRET = b"test-secret"
HASHED = re.compile("hmac-sha256:[0-9a-f]{64}")


def every_detector(action: Action = "mask") -> Redactor:
    return Redactor([RedactRule(action, detect=detector) for detector in DETECTORS], SECRET)


def redacted(redactor: Redactor, properties: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    message: dict[str, Any] = {"type": "track", "event": "Order Completed", "properties": properties}
    reasons = redactor.redact(message)
    return message["properties"], reasons


@pytest.mark.parametrize(
    ("detector", "text"),
    [
        ("email", "jane.doe@example.com"),
        ("email", "write to Jane.Doe+news@mail.example.co.uk."),
        ("card", "4242424242424242"),
        ("card", "4111-1111-1111-1111"),
        ("card", "378282246310005"),
        ("card", "paid with 4242 4242 4242 4242 yesterday"),
        ("iban", "GB82 WEST 1234 5698 7654 32"),
        ("iban", "DE89370400440532013000"),
        ("ipv4", "192.168.1.1"),
        ("ipv4", "from http://203.0.113.7/login"),
        ("phone", "+1 (415) 555-2671"),
        ("phone", "call me at +44 20 7946 0958 today"),
        ("phone", "(415) 555-2671"),
        ("phone", "020 7946 0958"),
    ],
)
def test_each_detector_finds_its_kind(detector: Detector, text: str) -> None:
    properties, reasons = redacted(every_detector(), {"note": text})
    assert reasons == [f"detect:{detector}:mask"]
    assert properties["note"] != text


@pytest.mark.parametrize(
    "text",
    [
        "1234567812345678",  # a 16-digit order id that fails Luhn
        "4242424242424241",  # one digit off a test card
        "order 4000-1234-5678-9012",
        "order 1234-5678-9012-3456",
        "DE89370400440532013001",  # wrong check digit
        "GB83 WEST 1234 5698 7654 32",
        "1.2.3.4.5",
        "256.1.1.1",
        "999.1.1.1",
        "10.0.19045.1",
        "Mozilla/5.0 Chrome/120.0.0.0 Safari/537.36",
        "2024-01-31",
        "2024-01-31T12:00:00.000Z",
        "2024-01-31 12:00:00",
        "1234567",
        "1706659200",
        "user@localhost",
        "version 3.2.1",
        "price 1,299.99 for 12 items",
    ],
)
def test_near_misses_are_left_alone(text: str) -> None:
    properties, reasons = redacted(every_detector(), {"note": text})
    assert (properties["note"], reasons) == (text, [])


def test_a_card_number_is_not_a_phone() -> None:
    phones = Redactor([RedactRule("mask", detect="phone")], None)
    for card in ("4242 4242 4242 4242", "4111-1111-1111-1111", "4242424242424242"):
        assert redacted(phones, {"card": card}) == ({"card": card}, [])


def test_card_mask_keeps_the_last_four_and_the_separators() -> None:
    properties, _ = redacted(every_detector(), {"a": "4242 4242 4242 4242", "b": "4111-1111-1111-1111"})
    assert properties == {"a": "**** **** **** 4242", "b": "****-****-****-1111"}


def test_masks_keep_each_detectors_shape() -> None:
    properties, _ = redacted(
        every_detector(),
        {
            "email": "jane.doe@example.com",
            "iban": "GB82 WEST 1234 5698 7654 32",
            "ip": "203.0.113.7",
            "phone": "call me at +44 20 7946 0958 today",
        },
    )
    assert properties["email"] == "j***@example.com"
    assert properties["iban"] == "GB** **** **** **** **54 32"
    assert properties["ip"] == "203.0.113.*"
    assert properties["phone"].startswith("call me at +")
    assert properties["phone"].endswith("58 today")
    assert "7946" not in properties["phone"]


def test_mask_value_shapes() -> None:
    assert mask_value("secret") == "s*****"
    assert mask_value("jane.doe@example.com") == "j***@example.com"
    assert mask_value(42) == "4*"
    assert mask_value(4242424242424242) == "************4242"
    assert mask_value(None) is None
    assert mask_value({"name": "Bob", "tags": ["alpha"]}) == {"name": "B**", "tags": ["a****"]}
    assert mask_value("4242424242424242", "card") == "************4242"
    assert mask_value("hello", "card") == "h****"  # a hint that does not fit falls back, never leaks


def test_several_matches_in_one_string_each_replaced() -> None:
    properties, reasons = redacted(
        every_detector(), {"note": "jane@example.com or bob@example.org, card 4242424242424242"}
    )
    assert properties["note"] == "j***@example.com or b***@example.org, card ************4242"
    assert sorted(reasons) == ["detect:card:mask", "detect:email:mask", "detect:email:mask"]


def test_detector_hash_replaces_only_the_match() -> None:
    redactor = Redactor([RedactRule("hash", detect="email")], SECRET)
    properties, reasons = redacted(redactor, {"note": "mail jane@example.com now"})
    assert properties["note"] == f"mail {hash_value(SECRET, 'jane@example.com')} now"
    assert reasons == ["detect:email:hash"]


def test_detector_drop_removes_the_key_or_nulls_the_element() -> None:
    redactor = Redactor([RedactRule("drop", detect="card")], None)
    properties, reasons = redacted(
        redactor, {"note": "card 4242424242424242", "keep": "x", "list": ["a", "4242424242424242"]}
    )
    assert properties == {"keep": "x", "list": ["a", None]}
    assert reasons == ["detect:card:drop", "detect:card:drop"]


def test_the_stronger_action_wins_when_rules_name_one_detector() -> None:
    redactor = Redactor([RedactRule("mask", detect="email"), RedactRule("drop", detect="email")], None)
    assert redacted(redactor, {"email": "jane@example.com"}) == ({}, ["detect:email:drop"])


def test_structural_fields_are_never_touched() -> None:
    message: dict[str, Any] = {
        "type": "track",
        "messageId": "4242424242424242",
        "timestamp": "2024-01-31T12:00:00.000Z",
        "writeKey": "jane@example.com",
        "context": {"ip": "192.168.1.1", "library": {"name": "jane@example.com", "version": "1.2.3"}},
        "properties": {"ip": "192.168.1.1"},
    }
    before = copy.deepcopy(message)
    every_detector("drop").redact(message)
    assert message == {**before, "properties": {}}


def test_path_rules_skip_structural_fields_even_through_a_star() -> None:
    message: dict[str, Any] = {
        "type": "track",
        "messageId": "m1",
        "context": {"ip": "192.168.1.1", "page": {"url": "u"}},
    }
    reasons = Redactor([RedactRule("drop", path=("*",)), RedactRule("drop", path=("context", "*"))], None).redact(
        message
    )
    assert message == {"type": "track", "messageId": "m1"}
    assert reasons == ["path:*:drop"]


def test_path_star_over_objects_and_arrays() -> None:
    redactor = Redactor(
        [
            RedactRule("mask", path=("traits", "*", "phone")),
            RedactRule("drop", path=("properties", "items", "*", "email")),
        ],
        None,
    )
    message: dict[str, Any] = {
        "traits": {"home": {"phone": "+14155552671", "city": "SF"}, "work": {"phone": "secret"}, "note": "x"},
        "properties": {"items": [{"email": "a@example.com", "sku": 1}, {"sku": 2}, "plain"]},
    }
    reasons = redactor.redact(message)
    assert message["traits"] == {
        "home": {"phone": "+*********71", "city": "SF"},
        "work": {"phone": "s*****"},
        "note": "x",
    }
    assert message["properties"]["items"] == [{"sku": 1}, {"sku": 2}, "plain"]
    assert sorted(reasons) == ["path:properties.items.*.email:drop", *["path:traits.*.phone:mask"] * 2]


def test_drop_on_an_array_element_keeps_the_indices() -> None:
    message: dict[str, Any] = {"properties": {"emails": ["a@example.com", "b@example.com"], "first": ["x", "y"]}}
    reasons = Redactor(
        [RedactRule("drop", path=("properties", "emails", "*")), RedactRule("drop", path=("properties", "first", "0"))],
        None,
    ).redact(message)
    assert message["properties"] == {"emails": [None, None], "first": [None, "y"]}
    assert len(reasons) == 3


def test_a_path_to_nothing_changes_nothing() -> None:
    message: dict[str, Any] = {"properties": {"name": "x", "list": [1]}}
    rules = [RedactRule(action, path=("properties", "email")) for action in ACTIONS]
    rules += [
        RedactRule("drop", path=("properties", "name", "deeper")),
        RedactRule("drop", path=("properties", "list", "5")),
    ]
    assert Redactor(rules, SECRET).redact(message) == []
    assert message == {"properties": {"name": "x", "list": [1]}}


def test_hash_is_keyed_deterministic_and_hides_the_value() -> None:
    message: dict[str, Any] = {
        "properties": {"email": "jane@example.com", "total": 42, "address": {"street": "1 Main St", "zip": "94107"}}
    }
    rules = [RedactRule("hash", path=("properties", key)) for key in ("email", "total", "address")]
    first, second = copy.deepcopy(message), copy.deepcopy(message)
    assert Redactor(rules, SECRET).redact(first) == [
        "path:properties.email:hash",
        "path:properties.total:hash",
        "path:properties.address:hash",
    ]
    Redactor(rules, SECRET).redact(second)
    other = copy.deepcopy(message)
    Redactor(rules, b"another-secret").redact(other)
    assert first == second
    assert all(HASHED.fullmatch(value) for value in first["properties"].values())
    assert all(first["properties"][key] != other["properties"][key] for key in first["properties"])
    stored = json.dumps(first)
    for raw in ("jane", "example.com", "Main St", "94107"):
        assert raw not in stored


def test_hash_value_types_and_canonical_json() -> None:
    assert hash_value(SECRET, 42) != hash_value(SECRET, "42")
    assert hash_value(SECRET, True) != hash_value(SECRET, "true")
    assert hash_value(SECRET, {"a": 1, "b": [2]}) == hash_value(SECRET, {"b": [2], "a": 1})
    # a string's hash is the plain HMAC of its UTF-8, so it can be computed elsewhere to join on it
    expected = hmac.new(SECRET, "josé@example.com".encode(), hashlib.sha256).hexdigest()
    assert hash_value(SECRET, "josé@example.com") == f"hmac-sha256:{expected}"


def test_a_hashed_value_is_not_redacted_again() -> None:
    redactor = Redactor([RedactRule("hash", path=("properties", "email")), RedactRule("mask", detect="card")], SECRET)
    message: dict[str, Any] = {"properties": {"email": "jane@example.com"}}
    assert redactor.redact(message) == ["path:properties.email:hash"]
    assert message["properties"]["email"] == hash_value(SECRET, "jane@example.com")


def test_reasons_and_output_carry_no_raw_values() -> None:
    raw = [
        "jane.doe@example.com",
        "4242424242424242",
        "GB82 WEST 1234 5698 7654 32",
        "203.0.113.7",
        "+1 (415) 555-2671",
    ]
    for action in ACTIONS:
        message: dict[str, Any] = {"properties": {"note": " and ".join(raw)}, "traits": {"email": raw[0]}}
        reasons = every_detector(action).redact(message)
        assert reasons
        assert all(re.fullmatch(r"detect:[a-z0-9]+:[a-z]+", reason) for reason in reasons)
        stored = json.dumps(message)
        for value in raw:
            assert value not in stored, (action, value)
        assert "7946" not in stored and "2671" not in stored and "WEST" not in stored


def test_no_rules_change_nothing() -> None:
    message: dict[str, Any] = {"properties": {"email": "jane@example.com"}}
    assert Redactor([], None).redact(message) == []
    assert message == {"properties": {"email": "jane@example.com"}}


def test_deep_messages_are_scanned_without_recursion() -> None:
    message: dict[str, Any] = {"properties": {}}
    node = message["properties"]
    for _ in range(2000):
        node["child"] = {}
        node = node["child"]
    node["email"] = "jane@example.com"
    assert every_detector().redact(message) == ["detect:email:mask"]
    assert node["email"] == "j***@example.com"


def test_luhn_and_iban_checks() -> None:
    assert luhn_valid("4242424242424242") and luhn_valid("4111-1111-1111-1111")
    assert not luhn_valid("4242424242424241") and not luhn_valid("") and not luhn_valid("42x2")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and iban_valid("de89370400440532013000")
    assert not iban_valid("DE89370400440532013001") and not iban_valid("DE89")


def test_parse_rules_builds_rules() -> None:
    rules = parse_rules(
        [
            {"path": "properties.email", "action": "hash"},
            {"path": "traits.*.phone", "action": "mask"},
            {"detect": "email", "action": "mask"},
        ],
        "privacy.redact",
    )
    assert rules == (
        RedactRule("hash", path=("properties", "email")),
        RedactRule("mask", path=("traits", "*", "phone")),
        RedactRule("mask", detect="email"),
    )
    assert parse_rules(None, "privacy.redact") == ()


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ("properties.email", "must be a mapping"),
        ({"path": "a.b", "detect": "email", "action": "mask"}, "exactly one of path and detect, got both"),
        ({"action": "mask"}, "exactly one of path and detect, got neither"),
        ({"detect": "ssn", "action": "mask"}, ".detect must be one of email, phone, card, iban, ipv4, got 'ssn'"),
        ({"path": "a.b", "action": "x"}, ".action must be one of drop, hash, mask, got 'x'"),
        ({"path": "a.b"}, ".action is required"),
        ({"path": "", "action": "drop"}, ".path must be a dotted path"),
        ({"path": "properties..email", "action": "drop"}, ".path must be a dotted path"),
        ({"path": 5, "action": "drop"}, ".path must be a dotted path"),
        ({"path": "a", "action": "drop", "actoin": "hash"}, "unknown key 'actoin'"),
        ({"path": "messageId", "action": "hash"}, "structural field"),
        ({"path": "context.ip", "action": "drop"}, "structural field"),
    ],
)
def test_parse_rules_errors_name_the_rule_and_the_problem(rule: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_rules([{"detect": "email", "action": "mask"}, rule], "sources.web.privacy.redact")
    assert str(caught.value).startswith("sources.web.privacy.redact[1]")
    assert problem in str(caught.value)


def test_parse_rules_refuses_a_non_list() -> None:
    with pytest.raises(ConfigError, match=r"^privacy\.redact must be a list"):
        parse_rules({"path": "a", "action": "drop"}, "privacy.redact")


def test_rules_built_in_code_are_checked_too() -> None:
    with pytest.raises(ConfigError, match="exactly one of path and detect"):
        RedactRule("mask")


@pytest.mark.parametrize("rule", [RedactRule("hash", path=("properties", "email")), RedactRule("hash", detect="email")])
def test_hash_needs_a_secret(rule: RedactRule) -> None:
    with pytest.raises(ConfigError, match="hashSecret is needed"):
        Redactor([RedactRule("mask", detect="card"), rule], None)
    with pytest.raises(ConfigError, match="redact rule 1"):
        Redactor([RedactRule("mask", detect="card"), rule], b"")
    assert Redactor([RedactRule("mask", detect="card")], None).redact({}) == []
