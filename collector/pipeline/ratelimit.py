"""Rate limiting per source (all write keys of a source share one bucket), off by default.

A token bucket: each event request costs one token; the bucket refills at `rate` tokens per
second up to `burst`. An empty bucket answers 429 with `Retry-After` (whole seconds until a token
is back) and nothing else: no `X-RateLimit-Reset`, whose meaning legacy SDKs disagree on
(seconds-from-now vs epoch), so a client reading it wrongly could sleep for decades.
With `--workers N` the workers share their buckets through a file in the workers' directory
(`workersDir`), so the server as a whole keeps each limit, not each worker.
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from collector.errors import CollectorError
from collector.settings import Settings, Source


class RateLimited(CollectorError):
    status = 429
    code = "rate_limited"
    message = "Too many requests"
    more_info = "This source sends faster than its rate limit; retry after the number of seconds in Retry-After."


@dataclass
class Bucket:
    tokens: float
    updated: float


def take_token(tokens: float, updated: float, now: float, rate: float, burst: float) -> tuple[float, float]:
    """(tokens left, seconds to wait): the wait is 0 when a token was taken, else nothing was."""
    tokens = min(burst, tokens + (now - updated) * rate)
    if tokens >= 1:
        return tokens - 1, 0.0
    return tokens, (1 - tokens) / rate


class SharedBuckets:
    """Token buckets the workers of one server keep in one memory-mapped file: a 16-byte slot per
    source (tokens, last update on the monotonic clock, which all processes share), each read and
    written under a byte-range lock on its slot."""

    SLOT = struct.Struct("dd")

    def __init__(self, path: Path, keys: Iterable[str]) -> None:
        self.slots = {key: index for index, key in enumerate(sorted(set(keys)))}  # the same in every worker
        size = max(1, len(self.slots)) * self.SLOT.size
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self.fd).st_size < size:
            os.ftruncate(self.fd, size)  # new bytes are zeros: an unused slot
        self.memory = mmap.mmap(self.fd, size)

    def wait_seconds(self, key: str, now: float, rate: float, burst: float) -> float:
        offset = self.slots[key] * self.SLOT.size
        fcntl.lockf(self.fd, fcntl.LOCK_EX, self.SLOT.size, offset)
        try:
            tokens, updated = self.SLOT.unpack_from(self.memory, offset)
            if updated == 0.0:  # first use of the slot
                tokens, updated = burst, now
            tokens, wait = take_token(tokens, updated, now, rate, burst)
            self.SLOT.pack_into(self.memory, offset, tokens, now)
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, self.SLOT.size, offset)
        return wait


class RateLimiter:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedBuckets | None = None,
        counters: Counter[tuple[str, str]] | None = None,
    ) -> None:
        self.clock = clock
        self.shared = shared
        self.counters: Counter[tuple[str, str]] = Counter() if counters is None else counters  # rate_limited
        self.buckets: dict[str, Bucket] = {}

    @classmethod
    def for_settings(cls, settings: Settings, counters: Counter[tuple[str, str]]) -> RateLimiter:
        """With --workers N the buckets live in a file in the workers' directory, shared by all."""
        shared = None
        if settings.workers_dir:
            sources = {source.id for source in settings.write_keys.values()}
            shared = SharedBuckets(Path(settings.workers_dir) / "rate-limits", sources)
        return cls(shared=shared, counters=counters)

    def wait_seconds(self, key: str, rate: float, burst: float) -> float:
        """0 if a token was taken now, else how long until one is available (nothing taken)."""
        now = self.clock()
        if self.shared is not None and key in self.shared.slots:
            return self.shared.wait_seconds(key, now, rate, burst)
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = Bucket(burst, now)
        bucket.tokens, wait = take_token(bucket.tokens, bucket.updated, now, rate, burst)
        bucket.updated = now
        return wait


def enforce(limiter: RateLimiter, source: Source) -> None:
    """Raise 429 when `source` is over its limit; a no-op for unlimited sources."""
    if source.rate_limit is None:
        return
    rate, burst = source.rate_limit
    wait = limiter.wait_seconds(source.id, rate, burst)
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        limiter.counters[("rate_limited", source.id)] += 1
        raise RateLimited(
            more_info=f"Source {source.id} is limited to {rate:g} requests/s (burst {burst:g}); "
            f"retry after {seconds} s.",
            headers={"Retry-After": str(seconds)},
            retryAfter=seconds,
        )
