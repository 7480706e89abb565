"""Readiness: whether each store took a durable write probe lately, kept by background tasks.

/ready reads this state and never waits on a pool or the network itself. Each store is probed
every `interval` seconds with its `ping()` (a small committed write: a transaction id on
PostgreSQL, a rewrite of the schema version under SQLite's write lock, a message to a small
JetStream probe stream acknowledged by its quorum). A probe that has not answered within
`timeout` marks the store unready at once; the next probe starts only when that one ends, so a
hung backend never piles probes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

INTERVAL = 0.5  # seconds between the end of one probe and the start of the next
TIMEOUT = 1.0  # a probe slower than this counts as a failure (orchestrators probe with 1 s timeouts)

log = logging.getLogger("collector")


class Probed(Protocol):
    async def ping(self) -> bool: ...


class Readiness:
    def __init__(
        self, storage: Probed, profiles: Probed | None, interval: float = INTERVAL, timeout: float = TIMEOUT
    ) -> None:
        self.stores: dict[str, Probed] = {"storage": storage}
        if profiles is not None and profiles is not storage:  # one instance serving both is probed once
            self.stores["profiles"] = profiles
        self.shared_profiles = profiles is storage
        self.interval = interval
        self.timeout = timeout
        self.ok = dict.fromkeys(self.stores, False)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def storage(self) -> bool:
        return self.ok["storage"]

    @property
    def profiles(self) -> bool:
        return self.ok["storage"] if self.shared_profiles else self.ok.get("profiles", True)

    async def start(self) -> None:
        """One probe of each store (so a fresh app answers at once), then the background loops."""
        await asyncio.gather(*(self._probe(name, store) for name, store in self.stores.items()))
        self._tasks = [
            asyncio.create_task(self._watch(name, store), name=f"readiness-{name}")
            for name, store in self.stores.items()
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self.ok = dict.fromkeys(self.stores, False)

    async def _watch(self, name: str, store: Probed) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._probe(name, store)

    async def _probe(self, name: str, store: Probed) -> None:
        probe = asyncio.ensure_future(store.ping())
        try:
            while True:
                done, _ = await asyncio.wait({probe}, timeout=self.timeout)
                if done:
                    break
                self._set(name, False)  # slower than the timeout: not writable now; wait for it to end
            ok = probe.result() is True
        except asyncio.CancelledError:
            probe.cancel()
            raise
        except Exception:
            ok = False
        self._set(name, ok)

    def _set(self, name: str, ok: bool) -> None:
        if self.ok[name] != ok and self._tasks:  # (not for the first probe, at start-up)
            log.warning("%s %s", name, "is writable again" if ok else "cannot take a durable write: unready")
        self.ok[name] = ok
