"""The inspect capability: how the kit sees what a target stored.

Two forms, a vendor picks one (or neither, and inspect cases are SKIPPED):

- HTTP: `GET {inspect_url}/v1/events?messageId=…|userId=…&wait=S` with
  `Authorization: Bearer {inspect_token}`, answering `{"data": [{"event": {…stored…}}, …]}`
  (a bare `{"events": [{…}]}` list is accepted too). `wait` holds the answer until a match
  exists, up to S seconds. This is the read-back API the reference collector serves.
- Python adapter: `--inspect-adapter module:attribute`, an object (or class, instantiated
  without arguments) with `fetch(field, value, wait) -> list[dict]`, reading the vendor's
  database or warehouse directly. `field` is "messageId" or "userId".

Quarantine cases (feature `quarantine`) also read what a quarantine source kept aside, by
messageId: `GET {inspect_url}/v1/quarantine?messageId=…&wait=S`, answering
`{"data": [{"messageId", "errors", "event", …}]}`, or the adapter's
`fetch_quarantined(message_id, wait) -> list[dict]` with the same items.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import httpx


class ReadBackError(Exception):
    """The capability answered wrongly or not at all: the case is an ERROR, not a FAIL."""


class ReadBack(Protocol):
    def fetch(self, field: str, value: str, wait: float) -> list[dict[str, Any]]: ...

    def fetch_quarantined(self, message_id: str, wait: float) -> list[dict[str, Any]]: ...


class HttpReadBack:
    def __init__(self, client: httpx.Client, base_url: str, token: str | None) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def fetch(self, field: str, value: str, wait: float) -> list[dict[str, Any]]:
        document = self._get("/v1/events", {field: value, "wait": f"{wait:g}", "limit": "100"}, wait)
        if isinstance(document, dict) and isinstance(document.get("data"), list):
            return [item["event"] if isinstance(item, dict) and "event" in item else item for item in document["data"]]
        if isinstance(document, dict) and isinstance(document.get("events"), list):
            return list(document["events"])
        raise ReadBackError("read-back answer has neither `data` nor `events`")

    def fetch_quarantined(self, message_id: str, wait: float) -> list[dict[str, Any]]:
        document = self._get("/v1/quarantine", {"messageId": message_id, "wait": f"{wait:g}", "limit": "100"}, wait)
        if isinstance(document, dict) and isinstance(document.get("data"), list):
            return list(document["data"])
        raise ReadBackError("quarantine read-back answer has no `data` list")

    def _get(self, path: str, params: dict[str, str], wait: float) -> Any:
        try:
            answer = self.client.get(f"{self.base_url}{path}", params=params, headers=self.headers, timeout=wait + 10)
        except httpx.HTTPError as exc:
            raise ReadBackError(f"read-back request failed: {exc!r}") from None
        if answer.status_code != 200:
            raise ReadBackError(f"read-back answered {answer.status_code}: {answer.text[:300]}")
        try:
            return answer.json()
        except ValueError:
            raise ReadBackError("read-back answer is not JSON") from None


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

    def fetch_quarantined(self, message_id: str, wait: float) -> list[dict[str, Any]]:
        method = getattr(self.adapter, "fetch_quarantined", None)
        if not callable(method):
            raise ReadBackError("the adapter has no fetch_quarantined(message_id, wait) for quarantine cases")
        try:
            return list(method(message_id, wait))
        except Exception as exc:
            raise ReadBackError(f"adapter failed: {exc!r}") from None
