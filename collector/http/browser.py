"""What browsers need beyond POSTing events:

- `GET /v1/projects/{writeKey}/settings`: the settings document analytics.js fetches from its
  `cdnURL` at load, pointing `apiHost` at this collector, so
  `AnalyticsBrowser.load({writeKey, cdnURL: '<collector URL>'})` needs no other configuration.
- Pixel beacons: `GET /v1/{track,t,page,p}` and `/v1/pixel/{track,page}` with the message as
  base64 JSON in `data=` (and `writeKey=`, or `writeKey` inside the message), for `<img>` tags
  and e-mail opens. The decoded message goes through the same pipeline as a POST body; the
  answer is a 1×1 GIF once the event is stored, and the usual JSON error otherwise.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from collector.errors import BadRequest, NotFound
from collector.paths import SPEC_PREFIX, IngestPaths
from collector.pipeline import intake
from collector.pipeline.auth import ServerKeyInBrowser
from collector.pipeline.ingest import ingest
from collector.pipeline.intake import Caller
from collector.pipeline.runtime import Runtime

# The smallest transparent GIF (43 bytes).
PIXEL_GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")


HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?::[0-9]{1,5})?")
HOST_IPV6 = re.compile(r"\[[0-9a-f:.]+\](?::[0-9]{1,5})?")


def collector_base_url(request: Request, runtime: Runtime) -> str:
    """Where browsers reach us: `publicUrl` when set (behind a proxy); else the request's Host when
    `allowedHosts` lists it, or, with no list, when it is a well-formed host[:port]. A Host is never
    echoed as it came: it would poison a CDN's copy of the settings for everyone."""
    settings = runtime.settings
    if settings.public_url:
        return settings.public_url
    host = (request.headers.get("host") or "").lower()
    if settings.allowed_hosts:
        allowed = host in settings.allowed_hosts
    else:
        allowed = HOST.fullmatch(host) is not None or HOST_IPV6.fullmatch(host) is not None
    if not allowed:
        raise BadRequest(
            "Host not allowed",
            "This collector answers for the hosts in allowedHosts (or set publicUrl).",
            code="host_not_allowed",
        )
    return f"{request.url.scheme}://{host}"


def settings_document(write_key: str, base_url: str, prefix: str = SPEC_PREFIX) -> dict[str, Any]:
    """The subset of Segment's CDN settings that analytics-next 1.84 reads, for the Segment.io plugin only.
    `prefix`: the ingest prefix the document was asked for on, which the SDK then sends to."""
    protocol, _, host_and_prefix = base_url.partition("://")
    api_host = host_and_prefix.rstrip("/") + prefix  # analytics.js wants host[:port][/path]/<prefix>, no scheme
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": api_host,
                "protocol": protocol,
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
                "maybeBundledConfigIds": {},
            }
        },
        "plan": {
            "track": {"__default": {"enabled": True, "integrations": {}}},
            "identify": {"__default": {"enabled": True}},
            "group": {"__default": {"enabled": True}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        # analytics-next takes the metrics *protocol* only from its load options (default https),
        # so over plain http its SDK metrics would fail with console errors: off there.
        "metrics": {"sampleRate": 0.1 if protocol == "https" else 0, "host": api_host},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }


async def project_settings(request: Request, prefix: str = SPEC_PREFIX) -> Response:
    """GET /<prefix>/projects/{writeKey}/settings, answered with apiHost on the same prefix."""
    runtime: Runtime = request.app.state.runtime
    write_key = request.path_params["write_key"]
    if write_key not in runtime.settings.write_keys:
        raise NotFound("Unknown write key", "No source has this write key. Check the key in your SDK set-up.")
    if runtime.settings.key_kinds.get(write_key) == "server":  # a server key pasted into a page
        raise ServerKeyInBrowser(more_info="This is a server key: web pages must load a browser key's settings.")
    document = settings_document(write_key, collector_base_url(request, runtime), prefix)
    return Response(
        orjson.dumps(document),
        media_type="application/json",
        # Without publicUrl the answer depends on the Host: a shared cache must key on it.
        headers={"Cache-Control": "public, max-age=60"} | ({} if runtime.settings.public_url else {"Vary": "Host"}),
    )


async def pixel(request: Request, kind: str) -> Response:
    """GET beacon: same validation, enrichment and storage as a POST; a 1×1 GIF when stored."""
    runtime: Runtime = request.app.state.runtime
    parsed, size = intake.decode_data(request.query_params.get("data"), runtime.settings.max_event_bytes)
    await ingest(runtime, Caller.of(request.scope), parsed, size, kind)
    # no-store: an e-mail client or proxy that caches the image would hide later opens.
    return Response(PIXEL_GIF, media_type="image/gif", headers={"Cache-Control": "no-store, max-age=0"})


def routes(ingest: IngestPaths) -> list[Route]:
    def pixel_of(kind: str) -> Any:
        async def handler(request: Request) -> Response:
            return await pixel(request, kind)

        return handler

    def settings_on(prefix: str) -> Any:
        async def handler(request: Request) -> Response:
            return await project_settings(request, prefix)

        return handler

    table = [Route(path, settings_on(prefix), methods=["GET"]) for path, prefix in ingest.settings.items()]
    for kind, paths in ingest.pixels.items():
        table += [Route(path, pixel_of(kind), methods=["GET"]) for path in paths]
    return table
