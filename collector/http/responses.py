"""JSON answers encoded with orjson (Starlette's JSONResponse uses the slower stdlib json)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from collector import jsonio


def json_response(content: Any, status: int = 200) -> Response:
    return Response(jsonio.dumps(content), status_code=status, media_type="application/json")  # exact integers
