"""One error shape for every answer that is not a success.

    {"status": 400, "code": "invalid_json", "message": "...", "moreInfo": "...", "errors": [...]}

`status` + `message` + `moreInfo` is the Attuitive API's documented shape; `code` + `message`
is what Segment's and RudderStack's Python SDKs parse to decide a 4xx is final (without
`code` they raise KeyError and retry forever). Extra keys (`limit`, `accepted`, ...) are
allowed per error class.

CollectorError
 ├── BadRequest (400)            InvalidJSON, InvalidMessage, InvalidParameter, InvalidUserId, ...
 ├── Unauthorized (401)          missing or unknown write key / token
 ├── NotFound (404)
 ├── RequestTimeout (408), UrlTooLong (414), HeadersTooLarge (431): the connection guard
 ├── PayloadTooLarge (413)       names the limit that was crossed
 ├── UnsupportedMediaType (415)
 ├── TooManyConnections (503)    the connection guard, with Retry-After
 └── StorageUnavailable (503)    carries Retry-After
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson


class CollectorError(Exception):
    status = 500
    code = "internal_error"
    message = "Internal error"
    more_info = "The collector failed to handle the request; it has been logged."

    def __init__(
        self,
        message: str | None = None,
        more_info: str | None = None,
        *,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.message = message or self.message
        self.more_info = more_info or self.more_info
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "moreInfo": self.more_info,
        }
        body.update(self.extra)
        if self.errors is not None:
            body["errors"] = self.errors
        return body


class BadRequest(CollectorError):
    status = 400
    code = "bad_request"
    message = "Bad request"
    more_info = "The request could not be understood."


class InvalidJSON(BadRequest):
    code = "invalid_json"
    message = "Invalid JSON"
    more_info = "The body must be one JSON object (UTF-8)."


class InvalidMessage(BadRequest):
    code = "invalid_message"
    message = "Invalid message"
    more_info = "One or more messages do not match the spec; see errors."


class InvalidHTTP(BadRequest):
    code = "invalid_http"
    message = "Invalid HTTP request"
    more_info = "The request is not well-formed HTTP/1.1; the connection is closed."


class InvalidParameter(BadRequest):
    code = "invalid_parameter"
    message = "Invalid parameter"


class Unauthorized(CollectorError):
    status = 401
    code = "unauthorized"
    message = "Unauthorized"
    more_info = "Send a known write key (HTTP Basic user, `writeKey` in the body or ?writeKey=)."

    def __init__(self, message: str | None = None, more_info: str | None = None, **kw: Any) -> None:
        super().__init__(message, more_info, **kw)


class NotFound(CollectorError):
    status = 404
    code = "not_found"
    message = "Not found"
    more_info = "No such resource."


class MethodNotAllowed(CollectorError):
    status = 405
    code = "method_not_allowed"
    message = "Method not allowed"
    more_info = "This path does not accept that HTTP method."


class RequestTimeout(CollectorError):
    status = 408
    code = "request_timeout"
    message = "Request Timeout"
    more_info = "The request's headers or body did not arrive in time; the connection is closed."


class UrlTooLong(CollectorError):
    status = 414
    code = "url_too_long"
    message = "URI Too Long"


class HeadersTooLarge(CollectorError):
    status = 431
    code = "headers_too_large"
    message = "Request Header Fields Too Large"


class PayloadTooLarge(CollectorError):
    status = 413
    code = "payload_too_large"
    message = "Payload too large"


class UnsupportedMediaType(CollectorError):
    status = 415
    code = "unsupported_media_type"
    message = "Unsupported media type"
    more_info = "Send a JSON body with Content-Type: application/json."


class UnsupportedEncoding(UnsupportedMediaType):
    code = "unsupported_encoding"
    message = "Unsupported Content-Encoding"
    more_info = "Supported encodings: gzip, deflate, identity."


class StorageUnavailable(CollectorError):
    """Raised by storage backends for any failure that a retry may fix."""

    status = 503
    code = "storage_unavailable"
    message = "Storage unavailable"
    more_info = "Nothing from this request was acknowledged; retry after the number of seconds in Retry-After."

    def __init__(self, message: str | None = None, more_info: str | None = None, **kw: Any) -> None:
        super().__init__(message, more_info, **kw)


class TooManyConnections(CollectorError):
    status = 503
    code = "too_many_connections"
    message = "Service Unavailable"
    more_info = "This server process holds as many connections as it may; retry after Retry-After seconds."


class RenderSettings(Protocol):
    """What rendering needs of the settings (errors.py sits below settings.py)."""

    @property
    def retry_after_seconds(self) -> int: ...


JSON_CONTENT_TYPE = (b"content-type", b"application/json")


ECHO_LIMIT = 200  # characters of any one text an error body repeats (a value, a path, a sentence)


def capped(value: Any) -> Any:
    """The error body with every text longer than ECHO_LIMIT cut and marked: an error names the
    offending value, but a 10 KB id must not come back as a 30 KB answer."""
    if isinstance(value, str):
        if len(value) <= ECHO_LIMIT:
            return value
        return f"{value[:ECHO_LIMIT]}…[cut: {len(value) - ECHO_LIMIT} more characters]"
    if isinstance(value, dict):
        return {key: capped(item) for key, item in value.items()}
    if isinstance(value, list):
        return [capped(item) for item in value]
    return value


def render(error: CollectorError, settings: RenderSettings) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, JSON body) of an error answer: the one renderer, on every path (the event
    fast path in http/front.py and the Starlette routes). A 503 says when to retry."""
    body = orjson.dumps(capped(error.body()))
    headers = [JSON_CONTENT_TYPE, (b"content-length", str(len(body)).encode())]
    own = error.headers
    if isinstance(error, StorageUnavailable) and "Retry-After" not in own:
        own = own | {"Retry-After": str(settings.retry_after_seconds)}
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in own.items()]
    return error.status, headers, body


class ConfigError(Exception):
    """A setting or config file is wrong; raised at start-up, never per request."""
