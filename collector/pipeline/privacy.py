"""The privacy stage: a source's policy applied to each message right after the body is split,
before validation, so what a policy forbids reaches neither storage nor quarantine, the debugger,
error bodies or logs. For each message, in this order:

    suppressed identity → consent → the request's Sec-GPC / DNT signal → IP → redaction

A dropped message is answered like a stored one (the client did nothing wrong and must not
retry); every drop and every change is counted by source and reason (`collector_privacy_total`).
`anonymize` removes what identifies a device (ANONYMIZED_CONTEXT, ANONYMIZED_DEVICE) and keeps
the identity fields: they are the site's own ids, and a message needs one (drop discards them).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import ipaddress
from collections import Counter
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from collector.pipeline.enrichment import Arrival
from collector.pipeline.intake import Caller
from collector.pipeline.redaction import Redactor, parse_rules
from collector.settings import Privacy, Settings, Source
from collector.storage.base import IdentityKind, PrivacyRecord

ANONYMIZED_CONTEXT = ("ip", "userAgent", "userAgentData")  # context.*
ANONYMIZED_DEVICE = ("id", "advertisingId", "token")  # context.device.*: ids and the push token
IDENTITY_KINDS: tuple[IdentityKind, ...] = ("userId", "anonymousId")


def identity_digest(secret: bytes, kind: str, value: str) -> str:
    """How a suppression or deletion keeps an identity: HMAC-SHA256 under the workspace's key."""
    return hmac.new(secret, f"{kind}\0{value}".encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def identity_text(value: Any) -> str | None:
    """An identity as the stores keep it (integers as their digits), or None for other JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


@lru_cache(maxsize=4096)
def truncate_ip(text: str) -> str | None:
    """IPv4 to its /24, IPv6 to its /48 (the network address); None when `text` is no IP."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


class Guard:
    """What the stage needs at run time: each source's compiled redaction, and each workspace's
    suppressed identities (digests), which the privacy service refreshes from the ledger."""

    def __init__(self, settings: Settings) -> None:
        self.redactors: dict[str, Redactor] = {}
        self.active = frozenset(s.id for s in settings.write_keys.values() if s.privacy.changes_messages)
        for source in settings.write_keys.values():
            rules = parse_rules(list(source.privacy.redact), f"source {source.id} privacy.redact")
            if rules:
                self.redactors[source.id] = Redactor(rules, source.privacy.hash_secret)
        self.secrets = {ws.id: ws.privacy.hash_secret or ws.id.encode() for ws in settings.workspaces.values()}
        self.suppressed: dict[str, frozenset[str]] = {}  # workspace id → digests of "kind\0value"

    def applies(self, source: Source) -> bool:
        """Whether the stage has anything to do for this source's request (two set lookups when not)."""
        return source.id in self.active or source.workspace_id in self.suppressed

    def digest(self, workspace_id: str, kind: str, value: str) -> str:
        return identity_digest(self.secrets.get(workspace_id, workspace_id.encode()), kind, value)

    def load(self, records: list[PrivacyRecord]) -> None:
        """The active suppressions, from the ledger (replaces what was known)."""
        found: dict[str, set[str]] = {}
        for record in records:
            if record.action == "suppression" and record.status == "active":
                found.setdefault(record.workspace_id, set()).add(record.identity_digest)
        self.suppressed = {workspace: frozenset(digests) for workspace, digests in found.items()}

    def suppress(self, workspace_id: str, digest: str) -> None:
        """At once in this process (the others learn it at their next refresh)."""
        self.suppressed = {**self.suppressed, workspace_id: self.suppressed.get(workspace_id, frozenset()) | {digest}}


def apply(
    guard: Guard, source: Source, caller: Caller, arrival: Arrival, messages: list[Any], shared_context: bool
) -> tuple[dict[int, str], Counter[str]]:
    """(index of each message dropped → the reason, how many messages each reason dropped or changed). Kept
    messages, and the arrival whose IP and User-Agent enrichment copies, are changed in place.
    `shared_context`: a batch envelope's context was merged into the items (shallowly), so
    redaction, which works in place, gets each item's own copy."""
    policy = source.privacy
    reasons: Counter[str] = Counter()
    dropped: dict[int, str] = {}
    signal = _signal(policy, caller)
    if signal is not None and signal[1] == "drop":
        reason = f"{signal[0]}_dropped"
        dropped.update((index, reason) for index, message in enumerate(messages) if isinstance(message, dict))
        reasons[reason] = len(dropped)
        return dropped, reasons
    peer_ip_reason = None
    if signal is not None:  # anonymize: enrichment adds neither the peer's IP nor its User-Agent
        arrival.ip = arrival.user_agent = None
        arrival.user_agent_cut = False
    elif policy.ip != "keep" and arrival.ip is not None:
        arrival.ip = truncate_ip(arrival.ip) if policy.ip == "truncate" else None
        peer_ip_reason = "ip_truncated" if arrival.ip is not None else "ip_dropped"
    suppressed = guard.suppressed.get(source.workspace_id)
    redactor = guard.redactors.get(source.id)
    for index, message in enumerate(messages):
        if not isinstance(message, dict):  # not a message: refused or quarantined later, as it is now
            if redactor is not None and isinstance(message, (str, list)):
                holder = {"value": message}
                if redactor.redact(holder):
                    messages[index] = holder["value"]
                    reasons["redacted"] += 1
            continue
        if suppressed and _is_suppressed(guard, source.workspace_id, suppressed, message):
            dropped[index] = "suppressed"
            reasons["suppressed"] += 1
            continue
        consent = _consent(policy, message)
        if consent is not None:
            dropped[index] = consent
            reasons[consent] += 1
            continue
        context = message.get("context")
        if signal is not None:
            if isinstance(context, dict):
                _anonymize(context)
            reasons[f"{signal[0]}_anonymized"] += 1
        elif policy.ip != "keep":
            if isinstance(context, dict) and "ip" in context:
                reasons[_apply_ip(policy, context)] += 1
            elif peer_ip_reason is not None:
                reasons[peer_ip_reason] += 1
        if redactor is not None:
            if shared_context and isinstance(context, dict):
                message["context"] = copy.deepcopy(context)
            if redactor.redact(message):
                reasons["redacted"] += 1
    return dropped, reasons


def _signal(policy: Privacy, caller: Caller) -> tuple[str, str] | None:
    """("gpc" | "dnt", "anonymize" | "drop") when the request carries a signal the policy honours."""
    if caller.gpc and policy.global_privacy_control != "ignore":
        return "gpc", policy.global_privacy_control
    if caller.dnt and policy.do_not_track != "ignore":
        return "dnt", policy.do_not_track
    return None


def _is_suppressed(guard: Guard, workspace_id: str, suppressed: frozenset[str], message: Mapping[str, Any]) -> bool:
    for kind in IDENTITY_KINDS:
        value = identity_text(message.get(kind))
        if value is not None and guard.digest(workspace_id, kind, value) in suppressed:
            return True
    return False


def _consent(policy: Privacy, message: Mapping[str, Any]) -> str | None:
    """The reason to drop the message for its consent (None: keep it). analytics-next's consent
    integration sends context.consent.categoryPreferences: {category: true | false}."""
    if not policy.consent_require and policy.consent_when_missing == "allow":
        return None
    context = message.get("context")
    consent = context.get("consent") if isinstance(context, dict) else None
    preferences = consent.get("categoryPreferences") if isinstance(consent, dict) else None
    if not isinstance(preferences, dict):
        return "consent_missing" if policy.consent_when_missing == "drop" else None
    if all(preferences.get(category) is True for category in policy.consent_require):
        return None
    return "consent_refused"


def _anonymize(context: dict[str, Any]) -> None:
    for key in ANONYMIZED_CONTEXT:
        context.pop(key, None)
    device = context.get("device")
    if isinstance(device, dict):
        context["device"] = {key: value for key, value in device.items() if key not in ANONYMIZED_DEVICE}


def _apply_ip(policy: Privacy, context: dict[str, Any]) -> str:
    """A context.ip the client sent: truncated, or removed (also when it is no IP at all)."""
    sent = context["ip"]
    truncated = truncate_ip(sent) if policy.ip == "truncate" and isinstance(sent, str) else None
    if truncated is None:
        del context["ip"]
        return "ip_dropped"
    context["ip"] = truncated
    return "ip_truncated"
