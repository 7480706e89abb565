"""`GET /openapi.json`: an OpenAPI 3.1 document of every endpoint and of the one error shape.

Built from the same path tables the router uses, so a new call path cannot be left out. Message
bodies are described loosely here; the exact per-type rules are the JSON Schemas generated from
spec/ (`spec/schemas/<type>.json`), which the collector validates against.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from collector.paths import BATCH_PATHS, CALL_PATHS, PIXEL_PATHS
from collector.storage.base import RECEIPT_STATUSES

JSON = "application/json"
ERROR_STATUSES = {
    "400": "Bad request: invalid JSON, message or parameter (`errors` names each field by JSON pointer).",
    "401": "Missing or unknown write key / token.",
    "403": "The web origin is not allowed for this source.",
    "404": "Not found.",
    "413": "Over a size limit (`limit` names the setting).",
    "415": "Unsupported Content-Type or Content-Encoding.",
    "429": "Rate limited; retry after `Retry-After` seconds.",
    "501": "Not possible on this storage (e.g. a deletion with NATS event storage); nothing was done.",
    "503": "Storage unavailable; nothing was acknowledged, retry after `Retry-After` seconds.",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def errors(*statuses: str) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for status in statuses:
        answer = json_body(ref("Error"), ERROR_STATUSES[status])
        if status in ("429", "503"):
            answer["headers"] = RETRY_AFTER
        answers[status] = answer
    return answers


def query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or STRING}


def path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": STRING}


STRING = {"type": "string"}
WRITE_KEY_QUERY = query("writeKey", "The write key (when it is not the HTTP Basic user or in the body).")
EVENT_ERRORS = ("400", "401", "403", "413", "415", "429", "503")

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["status", "code", "message", "moreInfo"],
        "properties": {
            "status": {"type": "integer"},
            "code": {"type": "string", "description": "Stable machine-readable reason, e.g. invalid_message."},
            "message": {"type": "string"},
            "moreInfo": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "messageId": {"description": "The message's messageId as sent (null when absent)."},
                        "pointer": {"type": "string", "description": "JSON pointer to the field"},
                        "keyword": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
            },
        },
        "additionalProperties": True,
    },
    "Success": {
        "type": "object",
        "required": ["success"],
        "properties": {"success": {"const": True}},
        "additionalProperties": False,
    },
    "Message": {
        "type": "object",
        "description": "A Segment-spec message; validated against spec/schemas/<type>.json.",
        "properties": {
            "type": {"enum": ["track", "identify", "page", "screen", "group", "alias"]},
            "userId": {"type": ["string", "integer", "null"]},
            "anonymousId": {"type": ["string", "integer", "null"]},
            "event": {"type": "string"},
            "name": {"type": "string"},
            "properties": {"type": "object"},
            "traits": {"type": "object"},
            "context": {"type": "object"},
            "integrations": {"type": "object"},
            "messageId": {"type": "string"},
            "timestamp": {"type": "string"},
            "sentAt": {"type": "string"},
            "writeKey": {"type": "string"},
        },
    },
    "Batch": {
        "type": "object",
        "required": ["batch"],
        "properties": {
            "batch": {"type": "array", "items": ref("Message")},
            "context": {"type": "object"},
            "integrations": {"type": "object"},
            "sentAt": {"type": "string"},
            "writeKey": {"type": "string"},
        },
    },
    "StoredEvent": {
        "type": "object",
        "properties": {
            "position": {"type": "integer"},
            "workspaceId": {"type": "string"},
            "sourceId": {"type": "string"},
            "event": {"type": "object"},
        },
    },
    "EventPage": {
        "type": "object",
        "required": ["data", "meta"],
        "properties": {
            "data": {"type": "array", "items": {"type": "object"}},
            "meta": {"type": "object", "properties": {"limit": {"type": "integer"}, "nextCursor": {}}},
        },
    },
    "Receipts": {
        "type": "object",
        "required": ["messageId", "receipts"],
        "properties": {
            "messageId": {"type": "string"},
            "receipts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["status", "workspaceId", "sourceId", "messageId", "at"],
                    "properties": {
                        "status": {"enum": list(RECEIPT_STATUSES)},
                        "workspaceId": {"type": "string"},
                        "sourceId": {"type": "string"},
                        "messageId": {"type": ["string", "null"]},
                        "at": {"type": "string", "description": "receivedAt of the request that brought it"},
                        "policy": {"type": "string", "description": "suppressed, dropped: the policy's reason"},
                        "errors": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"pointer": STRING, "keyword": STRING, "message": STRING},
                            },
                        },
                    },
                },
            },
        },
    },
    "User": {
        "type": "object",
        "required": ["id", "workspaceId", "identifiers", "traits", "createdAt", "updatedAt"],
        "properties": {
            "id": {"type": "string", "pattern": "^usr_[A-Za-z0-9]{16}$"},
            "workspaceId": {"type": "string"},
            "identifiers": {"type": "object"},
            "traits": {"type": "object"},
            "createdAt": {"type": "string"},
            "updatedAt": {"type": ["string", "null"]},
        },
    },
    "UserPage": {
        "type": "object",
        "required": ["data", "meta"],
        "properties": {
            "data": {"type": "array", "items": ref("User")},
            "meta": {
                "type": "object",
                "properties": {
                    "limit": {"type": "integer"},
                    "nextPageUrl": {"type": ["string", "null"]},
                    "previousPageUrl": {"type": ["string", "null"]},
                    "url": {"type": "string"},
                },
            },
        },
    },
    "ProfileBody": {
        "type": "object",
        "properties": {"identifiers": {"type": "object"}, "traits": {"type": "object"}},
    },
}

SUCCESS = {"200": json_body(ref("Success"), 'Stored durably: exactly 200 {"success": true}.')}
WRITE_KEY_AUTH: list[dict[str, list[str]]] = [{"writeKey": []}, {}]  # {}: key in the body or query
ADMIN_AUTH: list[dict[str, list[str]]] = [{"adminToken": []}]


def event_operation(summary: str, body: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": WRITE_KEY_AUTH,
        "parameters": [WRITE_KEY_QUERY],
        "requestBody": {
            "required": True,
            "description": "JSON whatever the Content-Type (browsers send text/plain, or none), or a form "
            "(application/x-www-form-urlencoded) with the JSON or its base64 in `data`; gzip/deflate allowed.",
            "content": {JSON: {"schema": ref(body)}, "text/plain": {"schema": STRING}},
        },
        "responses": {**SUCCESS, **errors(*EVENT_ERRORS)},
    }


def pixel_operation(kind: str) -> dict[str, Any]:
    return {
        "summary": f"Pixel beacon: a {kind} message as base64 JSON in `data`; answers a 1x1 GIF when stored.",
        "parameters": [
            {**query("data", "base64 (standard or URL-safe) of the message JSON"), "required": True},
            WRITE_KEY_QUERY,
        ],
        "responses": {
            "200": {"description": "Stored.", "content": {"image/gif": {"schema": {"type": "string"}}}},
            **errors(*EVENT_ERRORS),
        },
    }


def profile_paths(prefix: str) -> dict[str, Any]:
    user_id = path_param("userId", "usr_ + 16 letters or digits")
    token: list[dict[str, list[str]]] = [{"workspaceToken": []}]
    body = {"required": True, "content": {JSON: {"schema": ref("ProfileBody")}}}
    user = {"200": json_body(ref("User"), "The user.")}
    return {
        f"{prefix}/identify": {
            "post": {
                "summary": "Create a user.",
                "security": token,
                "requestBody": body,
                "responses": {**user, **errors("400", "401", "413", "415")},
            },
            "get": {
                "summary": "Search users on identifiers (every other query parameter is a dotted identifier path).",
                "security": token,
                "parameters": [
                    query("limit", "1-100 (default 50)", {"type": "integer", "minimum": 1, "maximum": 100}),
                    query("pageToken", "From meta.nextPageUrl / previousPageUrl of the same search."),
                ],
                "responses": {"200": json_body(ref("UserPage"), "A page of users."), **errors("400", "401")},
            },
        },
        f"{prefix}/identify/{{userId}}": {
            "parameters": [user_id],
            "get": {"summary": "One user.", "security": token, "responses": {**user, **errors("400", "401", "404")}},
            "post": {
                "summary": "Append & merge identifiers and traits.",
                "security": token,
                "requestBody": body,
                "responses": {**user, **errors("400", "401", "404", "413", "415")},
            },
            "delete": {
                "summary": "Delete a user.",
                "security": token,
                "responses": {
                    "200": json_body(
                        {
                            "type": "object",
                            "required": ["id", "deleted"],
                            "properties": {"id": STRING, "deleted": {"const": True}},
                        },
                        "Deleted.",
                    ),
                    **errors("400", "401", "404"),
                },
            },
        },
        f"{prefix}/track/{{userId}}": {
            "parameters": [user_id],
            "post": {
                "summary": "Append & merge traits.",
                "security": token,
                "requestBody": body,
                "responses": {**user, **errors("400", "401", "404", "413", "415")},
            },
        },
    }


PRIVACY_RECORD = {
    "type": "object",
    "required": ["id", "workspaceId", "action", "identity", "status"],
    "properties": {
        "id": STRING,
        "workspaceId": STRING,
        "action": {"enum": ["suppression", "deletion"]},
        "identity": {"type": "object", "properties": {"kind": {"enum": ["userId", "anonymousId"]}, "digest": STRING}},
        "actor": STRING,
        "createdAt": STRING,
        "updatedAt": STRING,
        "status": {"enum": ["active", "removed", "running", "done", "failed"]},
        "events": {"type": "integer"},
        "quarantined": {"type": "integer"},
        "profiles": {"type": "integer"},
    },
}
IDENTITY_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["workspaceId"],
    "additionalProperties": False,
    "properties": {
        "workspaceId": STRING,
        "userId": {"type": ["string", "integer"]},
        "anonymousId": {"type": ["string", "integer"]},
    },
}


def privacy_paths() -> dict[str, Any]:
    """Suppressions, deletions and their audit (http/privacy.py)."""
    record = json_body(PRIVACY_RECORD, "The record (the identity only as its keyed digest).")
    listed = json_body(
        {"type": "object", "properties": {"data": {"type": "array", "items": PRIVACY_RECORD}}}, "Records."
    )
    workspace = query("workspaceId", "Only in this workspace.")
    record_id = path_param("record_id", "The record's id.")
    deletion_body = {**IDENTITY_BODY, "properties": {**IDENTITY_BODY["properties"], "suppress": {"type": "boolean"}}}
    return {
        "/v1/suppressions": {
            "post": {
                "summary": "Suppress an identity: its messages are answered 200 and not stored (admin token).",
                "security": ADMIN_AUTH,
                "requestBody": {"required": True, "content": {JSON: {"schema": IDENTITY_BODY}}},
                "responses": {"201": record, **errors("400", "401", "501")},
            },
            "get": {
                "summary": "Active suppressions (admin token).",
                "security": ADMIN_AUTH,
                "parameters": [workspace],
                "responses": {"200": listed, **errors("401")},
            },
        },
        "/v1/suppressions/{record_id}": {
            "delete": {
                "summary": "Remove a suppression (kept in the audit as removed).",
                "security": ADMIN_AUTH,
                "parameters": [record_id],
                "responses": {"200": record, **errors("401", "404")},
            }
        },
        "/v1/deletions": {
            "post": {
                "summary": "Delete an identity's events, quarantined messages and profile (admin token).",
                "security": ADMIN_AUTH,
                "requestBody": {"required": True, "content": {JSON: {"schema": deletion_body}}},
                "responses": {"202": record, **errors("400", "401", "501")},
            }
        },
        "/v1/deletions/{record_id}": {
            "get": {
                "summary": "A deletion's status and counts (admin token).",
                "security": ADMIN_AUTH,
                "parameters": [record_id],
                "responses": {"200": record, **errors("401", "404")},
            }
        },
        "/v1/privacy/audit": {
            "get": {
                "summary": "Every suppression and deletion, in order (admin token).",
                "security": ADMIN_AUTH,
                "parameters": [workspace],
                "responses": {"200": listed, **errors("401")},
            }
        },
    }


def document() -> dict[str, Any]:
    from collector import __version__

    paths: dict[str, Any] = {}
    for kind, call_paths in CALL_PATHS.items():
        for path in call_paths:
            paths.setdefault(path, {})["post"] = event_operation(f"One {kind} message.", "Message")
    for path in BATCH_PATHS:
        paths[path] = {"post": event_operation("A batch of messages.", "Batch")}
    for kind, pixel_paths in PIXEL_PATHS.items():
        for path in pixel_paths:
            paths.setdefault(path, {})["get"] = pixel_operation(kind)
    paths["/v1/m"] = {
        "post": {
            "summary": "analytics-next SDK telemetry: counted, never stored, always 200.",
            "requestBody": {"content": {"text/plain": {"schema": STRING}, JSON: {"schema": {"type": "object"}}}},
            "responses": SUCCESS,
        }
    }
    paths["/v1/projects/{writeKey}/settings"] = {
        "get": {
            "summary": "analytics.js settings (cdnURL = this collector), apiHost pointing here.",
            "parameters": [path_param("writeKey", "A source's write key")],
            "responses": {"200": json_body({"type": "object"}, "The settings document."), **errors("404")},
        }
    }
    readback_params = [
        query(name, f"Only events with this {name}.")
        for name in ("messageId", "type", "event", "userId", "anonymousId", "workspaceId", "sourceId")
    ]
    paths["/v1/events"] = {
        "get": {
            "summary": "Stored events (read-back, admin token).",
            "security": ADMIN_AUTH,
            "parameters": [
                *readback_params,
                query("since", "ISO-8601; receivedAt >= since"),
                query("until", "ISO-8601; receivedAt < until"),
                query("limit", "1-1000 (default 100)", {"type": "integer", "minimum": 1, "maximum": 1000}),
                query("cursor", "meta.nextCursor of the previous page"),
                query("wait", "Seconds (<= 30) to wait for a match", {"type": "number", "minimum": 0, "maximum": 30}),
            ],
            "responses": {"200": json_body(ref("EventPage"), "A page of stored events."), **errors("400", "401")},
        }
    }
    paths["/v1/events/{messageId}"] = {
        "get": {
            "summary": "One stored event (admin token).",
            "security": ADMIN_AUTH,
            "parameters": [
                path_param("messageId", "The event's messageId"),
                query("workspaceId", "Only in this workspace."),
                query("wait", "Seconds (<= 30) to wait for it", {"type": "number", "minimum": 0, "maximum": 30}),
            ],
            "responses": {"200": json_body(ref("StoredEvent"), "The event."), **errors("400", "401", "404")},
        }
    }
    paths["/v1/quarantine"] = {
        "get": {
            "summary": "Quarantined (invalid) messages with their errors (admin token).",
            "security": ADMIN_AUTH,
            "parameters": [
                query("workspaceId", "Only in this workspace."),
                query("messageId", "Only the message with this messageId."),
                query("limit", "1-1000 (default 100)", {"type": "integer", "minimum": 1, "maximum": 1000}),
                query("cursor", "meta.nextCursor of the previous page"),
                query("wait", "Seconds (<= 30) to wait for a match", {"type": "number", "minimum": 0, "maximum": 30}),
            ],
            "responses": {"200": json_body(ref("EventPage"), "Quarantined messages."), **errors("400", "401")},
        }
    }
    paths["/v1/receipts/{messageId}"] = {
        "get": {
            "summary": "What became of each message with this messageId (admin token).",
            "description": "Stored and quarantined messages are found where they are kept; duplicate, rejected, "
            "suppressed and dropped ones by their receipts, kept for receiptRetention.",
            "security": ADMIN_AUTH,
            "parameters": [
                path_param("messageId", "The messageId sent (or assigned)"),
                query("workspaceId", "Only in this workspace."),
                query("wait", "Seconds (<= 30) to wait for one", {"type": "number", "minimum": 0, "maximum": 30}),
            ],
            "responses": {
                "200": json_body(ref("Receipts"), "The receipts, oldest first."),
                **errors("400", "401", "404"),
            },
        }
    }
    status_schema = {"type": "object", "required": ["status"], "properties": {"status": STRING}}
    paths["/health"] = {"get": {"summary": "Liveness.", "responses": {"200": json_body(status_schema, "Alive.")}}}
    paths["/ready"] = {
        "get": {
            "summary": "Readiness: storage reachable.",
            "responses": {"200": json_body(status_schema, "Ready."), **errors("503")},
        }
    }
    for prefix in ("", "/api/v1"):
        paths.update(profile_paths(prefix))
    paths.update(privacy_paths())
    token_param = query("token", "The admin token (EventSource cannot send headers).")
    paths["/debugger"] = {
        "get": {
            "summary": "Live debugger page (admin token).",
            "security": ADMIN_AUTH,
            "parameters": [token_param],
            "responses": {
                "200": {"description": "HTML page.", "content": {"text/html": {"schema": STRING}}},
                **errors("401"),
            },
        }
    }
    paths["/debugger/stream"] = {
        "get": {
            "summary": "Server-Sent Events: one `arrival` per event or invalid message (admin token).",
            "security": ADMIN_AUTH,
            "parameters": [token_param, query("sourceId", "Only this source's arrivals.")],
            "responses": {
                "200": {"description": "Event stream.", "content": {"text/event-stream": {"schema": STRING}}},
                **errors("401"),
            },
        }
    }
    paths["/debugger/history"] = {
        "get": {
            "summary": "The last arrivals from storage and receipts, newest first (admin token).",
            "description": "What the debugger page shows on open. `streamFrom`: the stream's lastEventId that "
            "continues from this answer.",
            "security": ADMIN_AUTH,
            "parameters": [
                token_param,
                query("sourceId", "Only this source's arrivals."),
                query("limit", "1-500 (default 50)", {"type": "integer", "minimum": 1, "maximum": 500}),
            ],
            "responses": {
                "200": json_body(
                    {
                        "type": "object",
                        "required": ["data", "streamFrom"],
                        "properties": {
                            "data": {"type": "array", "items": {"type": "object", "required": ["status", "at"]}},
                            "streamFrom": STRING,
                        },
                    },
                    "Arrivals.",
                ),
                **errors("400", "401"),
            },
        }
    }
    paths["/metrics"] = {
        "get": {
            "summary": "Prometheus metrics (admin token).",
            "security": ADMIN_AUTH,
            "responses": {
                "200": {"description": "Prometheus text format.", "content": {"text/plain": {"schema": STRING}}},
                **errors("401"),
            },
        }
    }
    paths["/openapi.json"] = {
        "get": {"summary": "This document.", "responses": {"200": json_body({"type": "object"}, "OpenAPI 3.1.")}}
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "collector",
            "version": __version__,
            "description": "Segment-compatible event ingestion and an Attuitive-compatible profile API. "
            "Every non-success answer has the Error shape.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "writeKey": {"type": "http", "scheme": "basic", "description": "The write key as the Basic user."},
                "workspaceToken": {"type": "http", "scheme": "bearer", "description": "Profile API token."},
                "adminToken": {"type": "http", "scheme": "bearer", "description": "Admin token."},
            },
        },
    }


async def openapi_json(request: Request) -> Response:
    state = request.app.state
    cached = getattr(state, "openapi_json", None)
    if cached is None:
        cached = state.openapi_json = orjson.dumps(document())
    return Response(cached, media_type=JSON)


def routes() -> list[Route]:
    return [Route("/openapi.json", openapi_json, methods=["GET"])]
