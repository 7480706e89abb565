"""The ingestion pipeline after the body is parsed, top to bottom in `ingest()`:

    authenticate → rate limit → split batch → privacy → validate → plan → enrich → quality → store → profiles
    → receipts (of what was not stored)

http/events.py calls it for every event POST (and http/browser.py for pixel beacons); it sees the
request only through `intake.Caller`, and every stage is a plain function.
"""

from __future__ import annotations

import ipaddress
import re
import time
from typing import Any

import orjson

from collector import jsonio
from collector.errors import InvalidMessage
from collector.ids import is_user_id
from collector.paths import BATCH
from collector.pipeline import auth, intake, plans, privacy, ratelimit, repair
from collector.pipeline.enrichment import ENRICHMENT_REPAIRS, Arrival, enrich, now_micros
from collector.pipeline.intake import Caller
from collector.pipeline.receipts import receipts_for
from collector.pipeline.records import Flags, Indexed, IntakeReport, Problem, Rejected
from collector.pipeline.runtime import Runtime
from collector.pipeline.validation import Validators
from collector.schema.plans import VIOLATION_TYPES
from collector.settings import Source
from collector.storage.base import QuarantinedEvent, StoredEvent


async def ingest(runtime: Runtime, caller: Caller, parsed: intake.Parsed, body_size: int, kind: str) -> None:
    """The pipeline after the body is parsed; pixel beacons (browser.py) enter here with their `data=`.

    Contract violations are refused or quarantined (the source's invalidMessages). Quality
    problems and repairs (`flags`, by index in the request) never drop a message unless the
    source's qualityEnforcement says so: by default they are stored in context.protocols.violations."""
    settings = runtime.settings
    payload = parsed.payload
    source = auth.authenticate_source(caller, payload, settings)  # 401, 403 from a refused web origin
    ratelimit.enforce(runtime.rate_limiter, source)  # 429 + Retry-After, when the source has a limit
    messages, arrival, flags = split(payload, kind, body_size, caller, runtime, source)  # 400 / 413
    if parsed.needs_scrub:
        scrub_all(messages, flags)  # lone surrogates, NUL, NaN: repaired item by item
    dropped: dict[int, str] = {}  # index → the privacy policy that dropped it
    if runtime.privacy.applies(source):  # the source's policy, before anything else sees the messages
        shared_context = kind == BATCH and isinstance(payload.get("context"), dict)
        dropped, changes = privacy.apply(runtime.privacy, source, caller, arrival, messages, shared_context)
        runtime.count_reasons("privacy", source.id, changes)
    valid, invalid = validate(messages, runtime, body_size > settings.max_event_bytes, flags, dropped)
    planned = plans.enforce(runtime.plan_of(source), source.plan_enforcement, valid)  # the site's plan
    enrich_all(planned.kept, arrival, flags)  # clock repairs join the flags
    flagged, escalated = apply_quality(planned.kept, flags, source)  # record, or hold / refuse per the source
    kept, events, unstorable = encode_all(flagged, source)
    held, refused = sort_invalid(invalid + unstorable, escalated, planned, source)  # to quarantine / answered 400

    quarantined = quarantine(held, source, arrival.received_at_text)
    began = time.perf_counter()
    result = await runtime.storage.write(events, quarantined)  # 503 on failure, never 200
    write_seconds = time.perf_counter() - began
    for user_id, traits in profile_updates(kept, result.inserted_ids):
        await runtime.profiles.merge_user(source.workspace_id, user_id, None, traits, arrival.received_at_text)
    receipts = receipts_for(source, messages, events, result, refused, dropped, arrival.received_at_text)
    if receipts:  # duplicates, rejections, privacy drops: what was not stored (best effort)
        await runtime.receipts.record(receipts)

    runtime.count("plan_violations", source.id, planned.violations)
    # Outcomes (accepted, duplicate, quarantined, rejected) are counted by the metrics listener.
    runtime.notify(IntakeReport(source, events, held, refused, result, write_seconds, quality_rules(kept, flags)))
    if refused:
        raise rejection(refused, accepted=len(events), total=len(messages))


def scrub_all(messages: list[Any], flags: Flags) -> None:
    for index, message in enumerate(messages):
        if isinstance(message, dict):
            _repaired, problems = repair.scrub(message)
            if problems:
                flags.setdefault(index, []).extend(problems)


def enrich_all(valid: Indexed, arrival: Arrival, flags: Flags) -> None:
    """Each valid message becomes its stored form. A repair enrichment made (a clock value) replaces
    the schema's finding at the same field, so one problem is recorded once."""
    received_at = arrival.received_at_text
    for index, message in valid:
        repairs = enrich(message, arrival, received_at)
        if repairs:
            found = flags.get(index)
            if found:
                repaired_at = {problem["pointer"] for problem in repairs}
                repairs = [p for p in found if p["pointer"] not in repaired_at] + repairs
            flags[index] = repairs


def apply_quality(kept: Indexed, flags: Flags, source: Source) -> tuple[Indexed, list[Rejected]]:
    """(messages to store, messages the source's qualityEnforcement holds back with their problems)."""
    if not flags:
        return kept, []
    escalate = source.quality_enforcement != "allow"
    stored: Indexed = []
    escalated: list[Rejected] = []
    for index, message in kept:
        problems = flags.get(index)
        if not problems:
            stored.append((index, message))
        elif escalate:
            escalated.append(Rejected(index, message, problems))
        else:
            record_violations(message, problems)
            stored.append((index, message))
    return stored, escalated


def record_violations(message: dict[str, Any], problems: list[Problem]) -> None:
    """Quality problems in context.protocols.violations, the shape tracking plans use (plus `rule`)."""
    context = message["context"]  # enrichment made it an object
    protocols = context.get("protocols")
    protocols = dict(protocols) if isinstance(protocols, dict) else {}
    found = protocols.get("violations")  # a tracking plan's, recorded just before
    protocols["violations"] = [*(found if isinstance(found, list) else ()), *map(quality_violation, problems)]
    context["protocols"] = protocols


def quality_violation(problem: Problem) -> dict[str, Any]:
    keyword = problem["keyword"]
    field = problem["pointer"].lstrip("/").replace("/", ".")
    kind = "Repaired" if keyword in REPAIR_KEYWORDS else VIOLATION_TYPES.get(keyword, "Invalid Value")
    return {"type": kind, "field": field, "description": problem["message"], "rule": rule_name(problem)}


REPAIR_KEYWORDS = repair.SCRUB_KEYWORDS | frozenset(ENRICHMENT_REPAIRS)  # recorded as type "Repaired"
_INDEX_STEP = re.compile(r"/\d+(?=/|$)")


def rule_name(problem: Problem) -> str:
    """`<field>:<keyword>` with array indices as [] (the spec names these fields, so few exist);
    a scrub repair, which can happen anywhere, is named by its keyword alone."""
    keyword = problem["keyword"]
    if keyword in repair.SCRUB_KEYWORDS:
        return keyword
    field = _INDEX_STEP.sub("[]", problem["pointer"]).lstrip("/").replace("/", ".")
    return f"{field}:{keyword}"


def quality_rules(stored: Indexed, flags: Flags) -> dict[str, int]:
    """How many stored messages broke each quality rule (for /metrics)."""
    counts: dict[str, int] = {}
    if flags:
        for index, _message in stored:
            for problem in flags.get(index, ()):
                name = rule_name(problem)
                counts[name] = counts.get(name, 0) + 1
    return counts


def encode_all(messages: Indexed, source: Source) -> tuple[Indexed, list[StoredEvent], list[Rejected]]:
    """(messages stored, their rows, messages that cannot be). JSON nested deeper than the encoder
    allows (255 levels; the parser takes 1024) makes that one message invalid, not the request a 500."""
    kept: Indexed = []
    events: list[StoredEvent] = []
    unstorable: list[Rejected] = []
    for index, message in messages:
        try:
            events.append(stored_event(message, source))
            kept.append((index, message))
        except orjson.JSONEncodeError:
            problem = Problem(pointer="", keyword="maxDepth", message="JSON nested deeper than 255 levels")
            unstorable.append(Rejected(index, message, [problem]))
    return kept, events, unstorable


def sort_invalid(
    invalid: list[Rejected], escalated: list[Rejected], planned: plans.Outcome, source: Source
) -> tuple[list[Rejected], list[Rejected]]:
    """(to quarantine, to reject): contract violations follow the source's invalidMessages, quality
    problems its qualityEnforcement, plan violations its planEnforcement."""
    held = invalid if source.invalid_messages == "quarantine" else []
    refused = [] if held else invalid
    if escalated:
        if source.quality_enforcement == "quarantine":
            held = held + escalated
        else:
            refused = refused + escalated
    held = held + planned.quarantined
    refused = refused + planned.rejected
    if len(held) > 1:
        held.sort(key=lambda item: item.position)
    if len(refused) > 1:
        refused.sort(key=lambda item: item.position)
    return held, refused


def split(
    payload: dict[str, Any], kind: str, body_size: int, caller: Caller, runtime: Runtime, source: Source
) -> tuple[list[Any], Arrival, Flags]:
    """The messages of a request, what the server knows of its arrival, and the envelope's
    quality problems, which every item of the batch carries."""
    settings = runtime.settings
    ip = client_ip(caller, settings.trusted_proxies)
    user_agent = caller.user_agent
    now = now_micros()
    if kind != BATCH:
        if body_size > settings.max_event_bytes:
            raise intake.too_large("maxEventBytes", settings.max_event_bytes, "The event")
        sent_type = payload.get("type")
        if sent_type is None:
            payload["type"] = kind
        elif sent_type != kind:
            raise InvalidMessage(
                f"Message type {sent_type!r} does not match the path",
                f"This path accepts {kind!r} messages; send others to their own path or to /v1/batch.",
                errors=[
                    {
                        "index": 0,
                        "pointer": "/type",
                        "keyword": "const",
                        "message": f"type must be {kind!r} on this path",
                    }
                ],
            )
        return [payload], Arrival(now, ip, user_agent), {}
    messages = intake.split_batch(payload, settings.max_batch_events, source.quality_enforcement == "reject")
    contract, quality = envelope_problems(payload, runtime.validators)
    if contract:
        raise InvalidMessage("Invalid batch envelope", "Fix the envelope fields named in errors.", errors=contract)
    merge_envelope(messages, payload.get("context"), payload.get("integrations"))
    flags: Flags = {index: list(quality) for index in range(len(messages))} if quality else {}
    return messages, Arrival(now, ip, user_agent, payload.get("sentAt")), flags


def merge_envelope(messages: list[Any], context: Any, integrations: Any) -> None:
    """The envelope's context and integrations go into every item (the item's keys win), before
    validation and plans, so both see what will be stored. One that is not an object is ignored
    (a quality problem of the envelope)."""
    for name, shared in (("context", context), ("integrations", integrations)):
        if not shared or not isinstance(shared, dict):
            continue
        for message in messages:
            if isinstance(message, dict):
                own = message.get(name)
                if own is None:
                    message[name] = dict(shared)
                elif isinstance(own, dict):
                    message[name] = shared | own


def envelope_problems(payload: dict[str, Any], validators: Validators) -> tuple[list[Problem], list[Problem]]:
    """(contract errors, quality problems) of the envelope; item errors are reported per item."""
    found = validators.errors_for("batch", payload)
    if not found:
        return [], []
    contract = [e for e in validators.errors_for("contract/batch", payload) or () if not _in_items(e)]
    if contract:
        return contract, []
    return [], [e for e in found if not _in_items(e)]


def _in_items(problem: Problem) -> bool:
    return problem["pointer"].startswith("/batch/")


def validate(
    messages: list[Any], runtime: Runtime, check_sizes: bool, flags: Flags, dropped: dict[int, str]
) -> tuple[Indexed, list[Rejected]]:
    """(index, message) of the messages that meet the contract, and (index, message, errors) of
    those that do not, leaving out those a privacy policy dropped. The quality problems of valid
    ones are added to `flags`."""
    validators = runtime.validators
    by_type = validators.by_type
    max_bytes = runtime.settings.max_event_bytes
    valid: Indexed = []
    invalid: list[Rejected] = []
    for index, message in enumerate(messages):
        if dropped and index in dropped:
            continue
        if not isinstance(message, dict):
            invalid.append(
                Rejected(index, message, [Problem(pointer="", keyword="type", message="a message must be an object")])
            )
            continue
        if check_sizes and len(jsonio.dumps(message)) > max_bytes:
            text = f"event is larger than maxEventBytes ({max_bytes} bytes)"
            problem = Problem(pointer="", keyword="maxEventBytes", message=text)
            invalid.append(Rejected(index, message, [problem]))
            continue
        kind = message.get("type")
        validator = by_type.get(kind) if type(kind) is str else None  # a sent type may be any JSON
        if validator is not None and validator.is_valid(message):  # the usual case, without a call more
            valid.append((index, message))
            continue
        errors, quality = validators.check(message) if validator is not None else (validators.errors(message), [])
        if errors is not None:
            invalid.append(Rejected(index, message, errors))
        else:
            flags.setdefault(index, []).extend(quality)
            valid.append((index, message))
    return valid, invalid


def stored_event(message: dict[str, Any], source: Source) -> StoredEvent:
    kind = message["type"]
    get = message.get
    name = get("event") if kind == "track" else get("name")
    return StoredEvent(  # positional: keyword arguments cost ~1 us per event here
        source.workspace_id,
        source.id,
        message["messageId"],
        kind,
        name if isinstance(name, str) else None,
        get("userId"),
        get("anonymousId"),
        message["receivedAt"],
        message["timestamp"],
        jsonio.dumps(message),  # integers of any size keep their digits
    )


def quarantine(invalid: list[Rejected], source: Source, received_at: str) -> list[QuarantinedEvent]:
    kept = []
    for _index, message, errors in invalid:
        if isinstance(message, dict):
            message.pop("writeKey", None)
            message_id = message.get("messageId")
        else:
            message_id = None
        kept.append(
            QuarantinedEvent(
                workspace_id=source.workspace_id,
                source_id=source.id,
                message_id=message_id if isinstance(message_id, str) else None,
                received_at=received_at,
                body=jsonio.dumps_kept(message),
                errors=orjson.dumps(errors),
            )
        )
    return kept


def rejection(invalid: list[Rejected], accepted: int, total: int) -> InvalidMessage:
    errors = []
    for index, message, problems in invalid:
        message_id = message.get("messageId") if isinstance(message, dict) else None
        message_id = message_id if isinstance(message_id, str) else None
        for problem in problems:
            errors.append({"index": index, "messageId": message_id, **problem})
    first = errors[0]
    if total == 1:
        text = f"Invalid message: {first['message']} (at {first['pointer'] or '/'})"
    else:
        text = f"{len(invalid)} of {total} messages are invalid; {accepted} valid messages were stored"
    return InvalidMessage(
        text,
        "Each entry in errors names the message (index, messageId), the field (JSON pointer) and the rule.",
        errors=errors,
        accepted=accepted,
        rejected=len(invalid),
    )


def profile_updates(kept: Indexed, inserted: frozenset[str] | None) -> list[tuple[str, dict[str, Any]]]:
    """(userId, traits) of each identify whose userId is a profile (usr_…): its traits merge into
    that profile, once: a re-sent identify (a duplicate) does not overwrite newer traits."""
    updates = []
    for _index, message in kept:
        if message["type"] != "identify" or (inserted is not None and message["messageId"] not in inserted):
            continue
        user_id, traits = message.get("userId"), message.get("traits")
        if isinstance(user_id, str) and is_user_id(user_id) and isinstance(traits, dict) and traits:
            updates.append((user_id, traits))
    return updates


def client_ip(caller: Caller, trusted: tuple[Any, ...]) -> str | None:
    """The peer address; X-Forwarded-For is believed only hop by hop from trusted proxies."""
    peer = caller.peer
    if not trusted or peer is None:
        return peer
    current = parse_address(peer)
    if current is None or not any(current in network for network in trusted):
        return peer
    # Every X-Forwarded-For line counts: a proxy may add its own line after a forged one.
    forwarded = caller.forwarded_for
    if not forwarded:
        return peer
    for hop in reversed(forwarded.split(",")):
        address = parse_address(hop)
        if address is None:
            break  # garbage in the chain: stop at the last address we could trust
        current = address
        if not any(current in network for network in trusted):
            return str(current)
    return str(current)


def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP from a peer or X-Forwarded-For hop: ports and brackets dropped, IPv4-mapped IPv6 unwrapped."""
    text = text.strip()
    if text.startswith("["):  # [2001:db8::1]:443
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # 198.51.100.9:51234
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
