"""CORS for browsers (analytics.js): the policy the front door (front.py) applies to every answer.

Why it sits outside the routes: a browser that gets an answer without
`Access-Control-Allow-Origin` reports a network error and re-sends the event for minutes, so
every answer (errors, 404s, 503s, unhandled 500s) must carry the headers.

Policy:
- Each source lists `allowedOrigins` (default `*`: any origin). Credentials are never allowed,
  so `*` is safe; a listed origin is echoed with `Vary: Origin`.
- A preflight carries no write key, so it is answered for any origin that some source allows.
- An event request whose write key is visible in the headers (HTTP Basic or `?writeKey=`, which
  is how analytics.js sends it) from an origin its source does not allow is refused with 403
  before anything is read or stored; a key in the body is checked by the pipeline's one key
  resolver (pipeline/auth.py), which applies the same rule to the source it authenticates.
  The 403 itself is readable by the page, so the SDK sees a final 4xx instead of a network
  error it would retry.
- `Retry-After` and `X-Request-Id` are exposed so the SDK can honour 429/503 back-off.
"""

from __future__ import annotations

from collector.pipeline.auth import OriginNotAllowed, check_origin, origin_allowed, visible_write_key
from collector.pipeline.intake import Caller
from collector.settings import Settings

# Preflight answer: Chromium caps the cache at 2 hours; without a max-age it re-preflights after ~5 s.
MAX_AGE_SECONDS = 7200
ALLOWED_METHODS = b"GET, POST, DELETE, OPTIONS"
# analytics-next sends Authorization (Basic) and, on retries, X-Retry-Count; `*` would not cover
# Authorization per the Fetch spec, so they are listed.
ALLOWED_HEADERS = (b"authorization", b"content-type", b"content-encoding", b"x-retry-count", b"x-request-id")
EXPOSED_HEADERS = b"Retry-After, X-Request-Id"


class CorsPolicy:
    """The CORS decisions; the front door (front.py) applies them to every request."""

    def __init__(self, settings: Settings) -> None:
        # The key visible before the body is read decides here; ingest checks the origin again for
        # the source the request is authenticated as, wherever its key was.
        self.write_keys = settings.write_keys
        self.key_kinds = settings.key_kinds
        sources = {source.id: source for source in settings.write_keys.values()}
        # What a preflight (which carries no key) is answered for: the union of all sources.
        self.any_origin = not sources or any("*" in s.allowed_origins for s in sources.values())
        self.known_origins = frozenset(o for s in sources.values() for o in s.allowed_origins)

    def answer_headers(
        self, origin: bytes, caller: Caller
    ) -> tuple[list[tuple[bytes, bytes]], OriginNotAllowed | None]:
        """(CORS headers for the answer, the 403 to give instead when the key's source refuses the origin)."""
        key = visible_write_key(caller)
        source = self.write_keys.get(key) if key else None
        text = origin.decode("latin-1")
        if source is not None:
            wildcard = "*" in source.allowed_origins
            allowed = wildcard or origin_allowed(text, source.allowed_origins)
        else:
            wildcard = self.any_origin
            allowed = wildcard or origin_allowed(text, self.known_origins)
        if source is not None:
            try:
                check_origin(source, self.key_kinds.get(key or ""), text)  # the rule authentication applies
            except OriginNotAllowed as refusal:
                # Readable by the page (echoed origin) so the SDK drops the event instead of retrying.
                return cors_headers(origin, False), refusal
        return (cors_headers(origin, wildcard) if allowed else []), None

    def preflight(self, origin: bytes) -> tuple[list[tuple[bytes, bytes]], OriginNotAllowed | None]:
        """(headers of the 204 answer, or the 403 to give when no source accepts the origin)."""
        text = origin.decode("latin-1")
        if not (self.any_origin or origin_allowed(text, self.known_origins)):
            return [], OriginNotAllowed(more_info=f"No source accepts requests from {text}.")
        return [
            *cors_headers(origin, self.any_origin),
            (b"access-control-allow-methods", ALLOWED_METHODS),
            (b"access-control-allow-headers", b", ".join(ALLOWED_HEADERS)),
            (b"access-control-max-age", str(MAX_AGE_SECONDS).encode()),
            (b"content-length", b"0"),
        ], None


def cors_headers(origin: bytes, wildcard: bool) -> list[tuple[bytes, bytes]]:
    if wildcard:
        return [(b"access-control-allow-origin", b"*"), (b"access-control-expose-headers", EXPOSED_HEADERS)]
    return [
        (b"access-control-allow-origin", origin),
        (b"access-control-expose-headers", EXPOSED_HEADERS),
        (b"vary", b"Origin"),
    ]
