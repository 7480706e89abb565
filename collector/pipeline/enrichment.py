"""The enrichment stage: what the server adds to a valid message before it is stored. Pure.

Timestamps (see README "Timestamps"):
  originalTimestamp = the client's `timestamp`, as sent
  timestamp         = receivedAt − (sentAt − originalTimestamp)   sentAt: the event's, else the envelope's
  fallbacks         no/unparseable sentAt → the client's timestamp (UTC, ms);
                    no/unparseable client timestamp → receivedAt
  repairs           a number is epoch milliseconds (seconds below 10^11); an impossible date, or a
                    time more than 24 h after receivedAt, gives timestamp = receivedAt. Each is
                    returned as a problem (recorded as a quality violation), the raw value kept.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from collector.ids import unique_hex
from collector.pipeline.records import Problem

_ID_FIELDS = ("userId", "anonymousId", "previousId", "groupId", "messageId")
_SECONDS_BELOW = 10**11  # an epoch number below this is seconds (year 5138), above it milliseconds
_FUTURE_LIMIT_US = 24 * 3600 * 1_000_000  # a client time further ahead than this is not believed
MAX_USER_AGENT = 1024  # characters of the User-Agent header stored (real ones are under ~500)
_LONG_USER_AGENT = f"the User-Agent header is longer than {MAX_USER_AGENT} characters; stored cut"
_NO_PROBLEMS: list[Problem] = []  # shared, never appended to: most messages have none
_TIME_PROBLEMS = {
    "numericTimestamp": "a number, read as epoch {unit}",
    "unparseableTimestamp": "not an ISO-8601 date-time; ignored (the raw value is kept)",
    "futureTimestamp": "more than 24 h after receivedAt; timestamp is receivedAt (the raw value is kept)",
}
# keyword → (what arrives, what is stored), for README's table.
ENRICHMENT_REPAIRS = {
    "longUserAgent": (
        f"a `User-Agent` header longer than {MAX_USER_AGENT:,} characters (headers are not counted in maxEventBytes)",
        f"`context.userAgent` cut to {MAX_USER_AGENT:,} characters",
    ),
    "numericTimestamp": (
        "a number in `timestamp` or `sentAt` (`Date.now()`)",
        "read as epoch milliseconds (seconds below 10^11); `timestamp` in ISO-8601, "
        "the raw number in `originalTimestamp`",
    ),
    "unparseableTimestamp": (
        "an impossible or unreadable date (`2024-02-30T00:00:00Z`, an object)",
        "`timestamp` = `receivedAt`, the raw value in `originalTimestamp` (a bad `sentAt` is not used for skew)",
    ),
    "futureTimestamp": (
        "a client time more than 24 h after `receivedAt` once skew-corrected (year 9999)",
        "`timestamp` = `receivedAt`, the raw value in `originalTimestamp`",
    ),
}


class Arrival:
    """What the server knows about the request, the same for every message in it."""

    __slots__ = (
        "received_us",
        "ip",
        "user_agent",
        "user_agent_cut",
        "envelope_sent_at",
        "envelope_sent_us",
        "envelope_sent_problem",
        "received_at_text",
    )

    def __init__(self, received_us: int, ip: str | None, user_agent: str | None, envelope_sent_at: Any = None) -> None:
        self.received_us = received_us  # microseconds since the Unix epoch
        self.ip = ip
        self.user_agent_cut = user_agent is not None and len(user_agent) > MAX_USER_AGENT
        # Cut once per request: every message of a batch gets it, and headers bypass maxEventBytes.
        self.user_agent = user_agent[:MAX_USER_AGENT] if self.user_agent_cut and user_agent else user_agent
        self.envelope_sent_at = envelope_sent_at  # the batch's sentAt, for items without their own
        # Parsed and formatted once per request, not once per event.
        self.envelope_sent_us, self.envelope_sent_problem = client_micros(envelope_sent_at)
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


def client_micros(value: Any) -> tuple[int | None, str | None]:
    """A client-sent time in µs since the epoch, and the repair it took (a _TIME_PROBLEMS key)."""
    if value is None:
        return None, None
    if type(value) is str:
        moment = parse_time(value)
        return (None, "unparseableTimestamp") if moment is None else (micros(moment), None)
    if type(value) in (int, float) and value == value and abs(value) < 1e17:  # not NaN, not absurd
        scale = 1_000_000 if abs(value) < _SECONDS_BELOW else 1000
        return int(value * scale), "numericTimestamp"
    return None, "unparseableTimestamp"


def time_problem(field: str, keyword: str, value: Any) -> Problem:
    text = _TIME_PROBLEMS[keyword]
    if keyword == "numericTimestamp":
        text = text.format(unit="seconds" if abs(value) < _SECONDS_BELOW else "milliseconds")
    return Problem(pointer=f"/{field}", keyword=keyword, message=f"{field} is {text}")


def new_message_id() -> str:
    return "api-" + unique_hex()


def enrich(message: dict[str, Any], arrival: Arrival, received_at_text: str) -> list[Problem]:
    """Make `message` its stored form (in place). Returns the repairs it took (usually none)."""
    message.pop("writeKey", None)  # credentials are never stored
    for name in _ID_FIELDS:
        value = message.get(name, "")
        if type(value) is str:  # the usual case (or absent)
            continue
        if value is None:
            del message[name]  # python and the browser send null for "absent"
        elif type(value) is int:
            message[name] = str(value)  # exact digits, whatever the size
        elif type(value) is float:  # JSON Schema's "integer" admits 1.0
            message[name] = str(int(value))

    context = message.get("context")
    if not isinstance(context, dict):
        context = message["context"] = {}
    if arrival.ip is not None and "ip" not in context:
        context["ip"] = arrival.ip
    problems = _NO_PROBLEMS
    if arrival.user_agent is not None and "userAgent" not in context:
        context["userAgent"] = arrival.user_agent
        if arrival.user_agent_cut:
            problems = [Problem(pointer="/context/userAgent", keyword="longUserAgent", message=_LONG_USER_AGENT)]

    if not message.get("messageId"):
        message["messageId"] = new_message_id()

    client_time = message.get("timestamp")
    sent_at = message.get("sentAt")
    if sent_at is None and arrival.envelope_sent_at is not None:
        message["sentAt"] = sent_at = arrival.envelope_sent_at
        sent, sent_problem = arrival.envelope_sent_us, arrival.envelope_sent_problem
    else:
        sent, sent_problem = client_micros(sent_at)
    if sent_problem is not None:
        problems = [*problems, time_problem("sentAt", sent_problem, sent_at)]
    message.pop("originalTimestamp", None)
    if client_time is None:
        message["timestamp"] = received_at_text
    else:
        message["originalTimestamp"] = client_time
        original, time_repair = client_micros(client_time)
        if original is not None:
            corrected = original if sent is None else arrival.received_us - (sent - original)
            if corrected - arrival.received_us > _FUTURE_LIMIT_US:
                original, time_repair = None, "futureTimestamp"
        if original is None:
            message["timestamp"] = received_at_text
        else:
            message["timestamp"] = _safe_format(corrected, original, received_at_text)
        if time_repair is not None:
            problems = [*problems, time_problem("timestamp", time_repair, client_time)]
    message["receivedAt"] = received_at_text
    return problems


def _safe_format(moment: int, fallback_moment: int, fallback: str) -> str:
    """Absurd dates (before year 1 or past 9999 after correction) keep the client's own time."""
    for candidate in (moment, fallback_moment):
        try:
            return format_micros(candidate)
        except (OverflowError, ValueError):
            continue
    return fallback
