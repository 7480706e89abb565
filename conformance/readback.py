"""The inspect capability: how the kit sees what a target stored.

Two forms, a vendor picks one (or neither, and inspect cases are SKIPPED):

- HTTP: `GET {inspect_url}/v1/events?messageId=…|userId=…&wait=S` with
  `Authorization: Bearer {inspect_token}`, answering `{"data": [{"event": {…stored…}}, …]}`
  (a bare `{"events": [{…}]}` list is accepted too). `wait` holds the answer until a match
  exists, up to S seconds. This is the read-back API the reference collector serves.
- Python adapter: `--inspect-adapter module:attribute`, an object (or class, instantiated
  without arguments) with `fetch(field, value, wait) -> list[dict]`, reading the vendor's
  database or warehouse directly. `field` is "messageId" or "userId".
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import httpx


class ReadBackError(Exception):
    """The capability answered wrongly or not at all: the case is an ERROR, not a FAIL."""


class ReadBack(Protocol):
    def fetch(self, field: str, value: str, wait: float) -> list[dict[str, Any]]: ...


class HttpReadBack:
    def __init__(self, client: httpx.Client, base_url: str, token: str | None) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def fetch(self, field: str, value: str, wait: float) -> list[dict[str, Any]]:
        params = {field: value, "wait": f"{wait:g}", "limit": "100"}
        try:
            answer = self.client.get(
                f"{self.base_url}/v1/events", params=params, headers=self.headers, timeout=wait + 10
            )
        except httpx.HTTPError as exc:
            raise ReadBackError(f"read-back request failed: {exc!r}") from None
        if answer.status_code != 200:
            raise ReadBackError(f"read-back answered {answer.status_code}: {answer.text[:300]}")
        try:
            document = answer.json()
        except ValueError:
            raise ReadBackError("read-back answer is not JSON") from None
        if isinstance(document, dict) and isinstance(document.get("data"), list):
            return [item["event"] if isinstance(item, dict) and "event" in item else item for item in document["data"]]
        if isinstance(document, dict) and isinstance(document.get("events"), list):
            return list(document["events"])
        raise ReadBackError("read-back answer has neither `data` nor `events`")


class AdapterReadBack:
    def __init__(self, spec: str) -> None:
        module_name, _, attribute = spec.partition(":")
        if not module_name or not attribute:
            raise ValueError(f"--inspect-adapter must be module:attribute, got {spec!r}")
        target = getattr(importlib.import_module(module_name), attribute)
        self.adapter = target() if isinstance(target, type) else target
        if not callable(getattr(self.adapter, "fetch", None)):
            raise ValueError(f"{spec} has no fetch(field, value, wait) method")

    def fetch(self, field: str, value: str, wait: float) -> list[dict[str, Any]]:
        try:
            found = self.adapter.fetch(field, value, wait)
        except Exception as exc:  # a broken adapter must not look like a FAIL of the target
            raise ReadBackError(f"adapter failed: {exc!r}") from None
        return list(found)
