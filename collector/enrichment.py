"""The enrichment stage: what the server adds to a valid message before it is stored. Pure.

Timestamps (see README "Timestamps"):
  originalTimestamp = the client's `timestamp`, as sent
  timestamp         = receivedAt − (sentAt − originalTimestamp)   sentAt: the event's, else the envelope's
  fallbacks         no/unparseable sentAt → the client's timestamp (UTC, ms);
                    no/unparseable client timestamp → receivedAt
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from collector.ids import unique_hex

_ID_FIELDS = ("userId", "anonymousId", "previousId", "groupId")


class Arrival:
    """What the server knows about the request, the same for every message in it."""

    __slots__ = ("received_at", "ip", "user_agent", "envelope_sent_at", "received_at_text")

    def __init__(
        self, received_at: datetime, ip: str | None, user_agent: str | None, envelope_sent_at: Any = None
    ) -> None:
        self.received_at = received_at
        self.ip = ip
        self.user_agent = user_agent
        self.envelope_sent_at = envelope_sent_at  # the batch's sentAt, for items without their own
        self.received_at_text = format_time(received_at)  # formatted once per request


def format_time(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds (truncated) and Z, the form analytics.js sends."""
    offset = moment.utcoffset()
    if offset is None:  # naive: taken as UTC
        return moment.isoformat(timespec="milliseconds") + "Z"
    if offset:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"  # "+00:00" → "Z"; the year is padded to 4


def parse_time(value: Any) -> datetime | None:
    """A client timestamp, or None when it is not a parseable ISO-8601 string."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def new_message_id() -> str:
    return "api-" + unique_hex()


def enrich(message: dict[str, Any], arrival: Arrival, received_at_text: str) -> dict[str, Any]:
    """The stored form of a validated message. Mutates and returns `message`."""
    message.pop("writeKey", None)  # credentials are never stored
    for name in _ID_FIELDS:
        if name in message:
            value = message[name]
            if value is None:
                del message[name]  # python and the browser send null for "absent"
            elif type(value) is int:
                message[name] = str(value)
            elif type(value) is float:  # JSON Schema's "integer" admits 1.0
                message[name] = str(int(value))

    context = message.get("context")
    if not isinstance(context, dict):
        context = message["context"] = {}
    if arrival.ip is not None and "ip" not in context:
        context["ip"] = arrival.ip
    if arrival.user_agent is not None and "userAgent" not in context:
        context["userAgent"] = arrival.user_agent

    if not message.get("messageId"):
        message["messageId"] = new_message_id()

    client_time = message.get("timestamp")
    sent_at = message.get("sentAt")
    if sent_at is None and arrival.envelope_sent_at is not None:
        sent_at = message["sentAt"] = arrival.envelope_sent_at
    message.pop("originalTimestamp", None)
    if client_time is None:
        message["timestamp"] = received_at_text
    else:
        message["originalTimestamp"] = client_time
        original = parse_time(client_time)
        sent = parse_time(sent_at)
        if original is None:
            message["timestamp"] = received_at_text
        elif sent is None:
            message["timestamp"] = _safe_format(original, received_at_text)
        else:
            try:
                message["timestamp"] = format_time(arrival.received_at - (sent - original))
            except (OverflowError, ValueError):  # absurd dates: keep the client's own time
                message["timestamp"] = _safe_format(original, received_at_text)
    message["receivedAt"] = received_at_text
    return message


def _safe_format(moment: datetime, fallback: str) -> str:
    try:
        return format_time(moment)
    except (OverflowError, ValueError):
        return fallback
