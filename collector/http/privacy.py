"""The privacy API (admin token): suppressions, deletions and their audit.

    POST   /v1/suppressions       {"workspaceId", "userId" | "anonymousId"}        → 201 record
    GET    /v1/suppressions?workspaceId=                                          → {"data": [...]}
    DELETE /v1/suppressions/{id}                                                  → 200 record (removed)
    POST   /v1/deletions          {"workspaceId", "userId" | "anonymousId", "suppress"?} → 202 {"id", "status"}
    GET    /v1/deletions/{id}                                                     → record with counts
    GET    /v1/privacy/audit?workspaceId=                                         → every record

A record names its identity by kind and keyed digest only; no answer or error repeats the identity.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from collector.errors import InvalidJSON, InvalidParameter, NotFound
from collector.http.responses import json_response
from collector.pipeline.auth import bearer_token, require_admin
from collector.pipeline.privacy import IDENTITY_KINDS, identity_text
from collector.pipeline.runtime import Runtime
from collector.storage.base import IdentityKind, PrivacyRecord

MAX_BODY_BYTES = 4096


def routes() -> list[Route]:
    return [
        Route("/v1/suppressions", create_suppression, methods=["POST"]),
        Route("/v1/suppressions", list_suppressions, methods=["GET"]),
        Route("/v1/suppressions/{record_id}", remove_suppression, methods=["DELETE"]),
        Route("/v1/deletions", create_deletion, methods=["POST"]),
        Route("/v1/deletions/{record_id}", get_deletion, methods=["GET"]),
        Route("/v1/privacy/audit", audit, methods=["GET"]),
    ]


def record_body(record: PrivacyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "workspaceId": record.workspace_id,
        "action": record.action,
        "identity": {"kind": record.identity_kind, "digest": record.identity_digest},
        "actor": record.actor,
        "createdAt": record.created_at,
        "updatedAt": record.updated_at,
        "status": record.status,
        **record.details,
    }


def _admin(request: Request) -> tuple[Runtime, str]:
    """(runtime, the actor: a prefix of the admin token's SHA-256, so the audit says which token asked)."""
    runtime: Runtime = request.app.state.runtime
    authorization = request.headers.get("authorization")
    require_admin(authorization, runtime.settings)
    token = bearer_token(authorization) or ""
    return runtime, "admin:" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:12]


async def _identity_body(
    request: Request, runtime: Runtime, extra: frozenset[str]
) -> tuple[dict[str, Any], IdentityKind, str]:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise InvalidParameter(
            "Body too large", f"A privacy request is at most {MAX_BODY_BYTES} bytes.", parameter="body"
        )
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidJSON("Invalid JSON", "The body must be a JSON object.") from None
    if not isinstance(doc, dict):
        raise InvalidParameter("Invalid body", "The body must be a JSON object.", parameter="body")
    unknown = sorted(set(doc) - {"workspaceId", *IDENTITY_KINDS} - extra)
    if unknown:
        names = ", ".join(name[:40] for name in unknown[:5])
        raise InvalidParameter("Unknown fields", f"Unknown fields: {names}.", parameter=unknown[0][:40])
    workspace_id = doc.get("workspaceId")
    if not isinstance(workspace_id, str) or workspace_id not in runtime.settings.workspaces:
        raise InvalidParameter(
            "Invalid workspaceId", "workspaceId must name a workspace of this collector.", parameter="workspaceId"
        )
    sent = [kind for kind in IDENTITY_KINDS if doc.get(kind) is not None]
    if len(sent) != 1:
        raise InvalidParameter("One identity needed", "Send exactly one of userId and anonymousId.", parameter="userId")
    kind = sent[0]
    value = identity_text(doc[kind])
    if value is None or value == "":
        raise InvalidParameter(f"Invalid {kind}", f"{kind} must be a non-empty string or an integer.", parameter=kind)
    return doc, kind, value


async def create_suppression(request: Request) -> Response:
    runtime, actor = _admin(request)
    doc, kind, value = await _identity_body(request, runtime, frozenset())
    record = await runtime.privacy_service.suppress(doc["workspaceId"], kind, value, actor)
    return json_response(record_body(record), status=201)


async def list_suppressions(request: Request) -> Response:
    runtime, _actor = _admin(request)
    workspace_id = request.query_params.get("workspaceId")
    records = await runtime.privacy_service.records(workspace_id, "suppression")
    return json_response({"data": [record_body(r) for r in records if r.status == "active"]})


async def remove_suppression(request: Request) -> Response:
    runtime, actor = _admin(request)
    record = await runtime.privacy_service.unsuppress(request.path_params["record_id"], actor)
    if record is None:
        raise NotFound("Suppression not found", "No suppression has that id.")
    return json_response(record_body(record))


async def create_deletion(request: Request) -> Response:
    runtime, actor = _admin(request)
    doc, kind, value = await _identity_body(request, runtime, frozenset({"suppress"}))
    suppress = doc.get("suppress", False)
    if not isinstance(suppress, bool):
        raise InvalidParameter("Invalid suppress", "suppress must be true or false.", parameter="suppress")
    record = await runtime.privacy_service.start_deletion(doc["workspaceId"], kind, value, suppress, actor)
    return json_response({"id": record.id, "status": record.status, **record_body(record)}, status=202)


async def get_deletion(request: Request) -> Response:
    runtime, _actor = _admin(request)
    record = await runtime.privacy_service.record(request.path_params["record_id"], "deletion")
    if record is None:
        raise NotFound("Deletion not found", "No deletion has that id.")
    return json_response(record_body(record))


async def audit(request: Request) -> Response:
    runtime, _actor = _admin(request)
    records = await runtime.privacy_service.records(request.query_params.get("workspaceId"), None)
    return json_response({"data": [record_body(r) for r in records]})
