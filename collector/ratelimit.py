"""Rate limiting per source (all write keys of a source share one bucket), off by default.

A token bucket: each event request costs one token; the bucket refills at `rate` tokens per
second up to `burst`. An empty bucket answers 429 with `Retry-After` (whole seconds until a token
is back) and nothing else: no `X-RateLimit-Reset`, whose meaning legacy SDKs disagree on
(seconds-from-now vs epoch), so a client reading it wrongly could sleep for decades.
Buckets live in the process: with `--workers N` each worker limits on its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from collector.errors import CollectorError
from collector.runtime import Runtime
from collector.settings import Source


class RateLimited(CollectorError):
    status = 429
    code = "rate_limited"
    message = "Too many requests"
    more_info = "This source sends faster than its rate limit; retry after the number of seconds in Retry-After."


@dataclass
class Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.buckets: dict[str, Bucket] = {}

    def wait_seconds(self, key: str, rate: float, burst: float) -> float:
        """0 if a token was taken now, else how long until one is available (nothing taken)."""
        now = self.clock()
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / rate


def limiter_of(runtime: Runtime) -> RateLimiter:
    limiter = runtime.extras.get("rate_limiter")
    if limiter is None:
        limiter = runtime.extras["rate_limiter"] = RateLimiter()
    assert isinstance(limiter, RateLimiter)
    return limiter


def enforce(runtime: Runtime, source: Source) -> None:
    """Raise 429 when `source` is over its limit; a no-op for unlimited sources."""
    if source.rate_limit is None:
        return
    rate, burst = source.rate_limit
    wait = limiter_of(runtime).wait_seconds(source.id, rate, burst)
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        runtime.count("rate_limited", source.id)
        raise RateLimited(
            more_info=f"Source {source.id} is limited to {rate:g} requests/s (burst {burst:g}); "
            f"retry after {seconds} s.",
            headers={"Retry-After": str(seconds)},
            retryAfter=seconds,
        )
