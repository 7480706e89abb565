"""The enrichment stage: what the server adds to a valid message before it is stored. Pure.

Timestamps (see README "Timestamps"):
  originalTimestamp = the client's `timestamp`, as sent
  timestamp         = receivedAt − (sentAt − originalTimestamp)   sentAt: the event's, else the envelope's
  fallbacks         no/unparseable sentAt → the client's timestamp (UTC, ms);
                    no/unparseable client timestamp → receivedAt
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from collector.ids import unique_hex

_ID_FIELDS = ("userId", "anonymousId", "previousId", "groupId")


class Arrival:
    """What the server knows about the request, the same for every message in it."""

    __slots__ = ("received_us", "ip", "user_agent", "envelope_sent_at", "envelope_sent_us", "received_at_text")

    def __init__(self, received_us: int, ip: str | None, user_agent: str | None, envelope_sent_at: Any = None) -> None:
        self.received_us = received_us  # microseconds since the Unix epoch
        self.ip = ip
        self.user_agent = user_agent
        self.envelope_sent_at = envelope_sent_at  # the batch's sentAt, for items without their own
        # Parsed and formatted once per request, not once per event.
        self.envelope_sent_us = parse_micros(envelope_sent_at)
        self.received_at_text = format_micros(received_us)


def now_micros() -> int:
    return time.time_ns() // 1000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z
_PREFIXES: dict[int, str] = {}  # epoch second → "YYYY-MM-DDTHH:MM:SS": events cluster in a few seconds
_MILLIS = [f".{ms:03d}Z" for ms in range(1000)]  # a list index is cheaper than an f-string's format spec


def micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch (a naive datetime is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def format_micros(us: int) -> str:
    """ISO-8601 UTC with milliseconds (truncated) and Z, the form analytics.js sends. Formatting a
    datetime costs ~2.6 us here; a cached second plus the milliseconds as an f-string ~2.1
    us in the same timing run, and with a ready ".mmmZ" ~0.8 us.
    OverflowError outside years 1-9999."""
    second, rest = divmod(us, 1_000_000)
    prefix = _PREFIXES.get(second)
    if prefix is None:
        if not 0 <= second <= _LAST_SECOND:  # before 1970 (or past 9999: OverflowError)
            return (_EPOCH + timedelta(microseconds=us)).isoformat(timespec="milliseconds")[:-6] + "Z"
        if len(_PREFIXES) >= 4096:
            _PREFIXES.clear()
        prefix = _PREFIXES[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return prefix + _MILLIS[rest // 1000]


def format_time(moment: datetime) -> str:
    return format_micros(micros(moment))


def parse_time(value: Any) -> datetime | None:
    """A client timestamp, or None when it is not a parseable ISO-8601 string."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_micros(value: Any) -> int | None:
    moment = parse_time(value)
    return None if moment is None else micros(moment)


def new_message_id() -> str:
    return "api-" + unique_hex()


def enrich(message: dict[str, Any], arrival: Arrival, received_at_text: str) -> dict[str, Any]:
    """The stored form of a validated message. Mutates and returns `message`."""
    message.pop("writeKey", None)  # credentials are never stored
    for name in _ID_FIELDS:
        value = message.get(name, "")
        if type(value) is str:  # the usual case (or absent)
            continue
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
        message["sentAt"] = arrival.envelope_sent_at
        sent = arrival.envelope_sent_us
    else:
        sent = parse_micros(sent_at)
    message.pop("originalTimestamp", None)
    if client_time is None:
        message["timestamp"] = received_at_text
    else:
        message["originalTimestamp"] = client_time
        original = parse_micros(client_time)
        if original is None:
            message["timestamp"] = received_at_text
        elif sent is None:
            message["timestamp"] = _safe_format(original, received_at_text)
        else:
            try:
                message["timestamp"] = format_micros(arrival.received_us - (sent - original))
            except (OverflowError, ValueError):  # absurd dates: keep the client's own time
                message["timestamp"] = _safe_format(original, received_at_text)
    message["receivedAt"] = received_at_text
    return message


def _safe_format(moment: int, fallback: str) -> str:
    try:
        return format_micros(moment)
    except (OverflowError, ValueError):
        return fallback
