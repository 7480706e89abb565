"""`GET /metrics`: the Prometheus text of pipeline/metrics.py (admin token: per-source counts are
business data), and the route label of a request."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from collector.pipeline.auth import require_admin
from collector.pipeline.runtime import Runtime


def route_template(scope: Scope) -> str:
    """The matched path with its parameters put back as `{name}` (bounded label values)."""
    if "endpoint" not in scope:
        return "unmatched"
    path: str = scope["path"]
    for name, value in (scope.get("path_params") or {}).items():
        path = path.replace(str(value), "{" + name + "}", 1)
    return path


async def metrics_endpoint(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    require_admin(request.headers.get("authorization"), runtime.settings)
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def routes() -> list[Route]:
    return [Route("/metrics", metrics_endpoint, methods=["GET"])]
