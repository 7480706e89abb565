"""The event API's HTTP side: the event POSTs (answered from raw ASGI by the front door), SDK
telemetry, health and readiness.

    read body → parse JSON → pipeline.ingest() → 200 {"success": true}
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from collector.errors import CollectorError, StorageUnavailable
from collector.pipeline import intake
from collector.pipeline.ingest import ingest
from collector.pipeline.intake import Caller, Receive
from collector.pipeline.runtime import Runtime

SUCCESS_BODY = b'{"success":true}'


def success() -> Response:
    # Exactly 200 {"success": true}: several SDKs treat any other 2xx as a failure and retry forever.
    return Response(SUCCESS_BODY, status_code=200, media_type="application/json")


async def collect(runtime: Runtime, caller: Caller, receive: Receive, kind: str) -> None:
    """POST /v1/{track,…}, /v1/{t,…} (kind = the call type) and /v1/{batch,import,b} (kind = paths.BATCH).
    Returns when every event is durably stored (the answer is then 200 {"success": true});
    raises CollectorError for every other answer."""
    max_bytes = runtime.settings.max_request_bytes
    body = await intake.read_body(receive, caller, max_bytes)  # 413 / 415 / 400
    parsed, size = intake.parse_body(body, caller.content_type, max_bytes)  # 400 only for what is not JSON at all
    await ingest(runtime, caller, parsed, size, kind)


async def telemetry(request: Request) -> Response:
    """POST /v1/m: analytics-next's SDK metrics. Counted, never stored, always 200."""
    runtime: Runtime = request.app.state.runtime
    series = 0
    try:
        body = await intake.read_body(request.receive, Caller.of(request.scope), runtime.settings.max_request_bytes)
        payload = orjson.loads(body) if body else {}
        if isinstance(payload, dict) and isinstance(payload.get("series"), list):
            series = len(payload["series"])
    except (orjson.JSONDecodeError, CollectorError):  # telemetry is never worth an error to the SDK
        pass
    runtime.count("telemetry_requests", "-")
    runtime.count("telemetry_series", "-", series)
    return success()


async def health(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def ready(request: Request) -> Response:
    """From the state of the background write probes (readiness.py): answered at once, never waits on storage."""
    runtime: Runtime = request.app.state.runtime
    probes = runtime.readiness
    storage_ok = runtime.ready and probes.storage
    profiles_ok = runtime.ready and probes.profiles
    if storage_ok and profiles_ok:
        return Response(b'{"status":"ready"}', media_type="application/json")
    error = StorageUnavailable(
        "Not ready",
        "Event storage is "
        + ("reachable" if storage_ok else "unreachable")
        + "; profile storage is "
        + ("reachable" if profiles_ok else "unreachable")
        + ".",
        storage=storage_ok,
        profiles=profiles_ok,
    )
    raise error  # rendered like every error (errors.render: Retry-After from the settings)
