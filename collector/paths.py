"""The event API's route table, read once from the spec (spec/calls/*.yaml and spec/batch.yaml
carry `paths:`), so the app, the OpenAPI document, metrics and the pixel share one source.

    CALL_PATHS   call type → its POST paths (/v1/track, /v1/t)
    BATCH_PATHS  the batch POST paths (/v1/batch, /v1/import, /v1/b)
    PIXEL_PATHS  call type → the GET paths a pixel <img> may use (its call paths + /v1/pixel/<type>)
    EVENT_PATHS  path → call type, or BATCH for the batch paths (what the front door answers itself)

The spec writes them under /v1. `ingestPrefixes` (default ["/v1"]) serves every ingest path under
each prefix as well (a site may use /e7/t, which ad blockers' path lists do not know):
`IngestPaths.of(prefixes)` builds the whole table once, at start-up, so the front door's routing
stays one dict lookup whatever the number of prefixes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from collector.errors import ConfigError
from collector.schema.dsl import SpecError, default_spec_dir

CALL_TYPES: Final[tuple[str, ...]] = ("track", "identify", "page", "screen", "group", "alias")
BATCH: Final = "batch"  # the kind of a batch request, beside the call types
PIXEL_CALLS: Final[tuple[str, ...]] = ("track", "page")  # what an <img> beacon can say
SPEC_PREFIX: Final = "/v1"  # the spec's paths all start with it; an ingest prefix replaces it


def _paths_of(path: Path) -> tuple[str, ...]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    paths = doc.get("paths") if isinstance(doc, dict) else None
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p.startswith("/v1/") for p in paths):
        raise SpecError(f"{path}: `paths:` must be a list of absolute paths under {SPEC_PREFIX}")
    return tuple(paths)


def _read(spec_dir: Path) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    calls = {call: _paths_of(spec_dir / "calls" / f"{call}.yaml") for call in CALL_TYPES}
    return calls, _paths_of(spec_dir / "batch.yaml")


CALL_PATHS, BATCH_PATHS = _read(default_spec_dir())
PIXEL_PATHS: Final = {call: (*CALL_PATHS[call], f"/v1/pixel/{call}") for call in PIXEL_CALLS}
EVENT_PATHS: Final[dict[str, str]] = {
    path: call for call, paths in CALL_PATHS.items() for path in paths
} | dict.fromkeys(BATCH_PATHS, BATCH)

# What an ingest prefix must keep clear of: the read-back, admin and profile APIs. A prefix equal
# to one of these or under it would shadow its routes or be shadowed by them (a test checks that
# every route of the app that is not an ingest path starts with one of these).
RESERVED_PATHS: Final[tuple[str, ...]] = (
    "/v1/events",
    "/v1/quarantine",
    "/v1/receipts",
    "/v1/suppressions",
    "/v1/deletions",
    "/v1/privacy",
    "/health",
    "/ready",
    "/metrics",
    "/debugger",
    "/openapi.json",
    "/identify",
    "/track",
    "/api/v1",
)
_PREFIX = re.compile(r"(?:/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)+")  # fullmatch: no dot segments, no trailing slash


def check_prefixes(prefixes: tuple[str, ...]) -> tuple[str, ...]:
    """The ingestPrefixes setting, checked (ConfigError naming the bad one); duplicates dropped."""
    if not prefixes:
        raise ConfigError("ingestPrefixes must list at least one prefix (the default is /v1)")
    for prefix in prefixes:
        if not _PREFIX.fullmatch(prefix):
            raise ConfigError(
                f"ingestPrefixes: {prefix!r} is not a path prefix: it must start with /, not end with /, "
                "and hold only letters, digits and - . _ ~ between slashes"
            )
        for reserved in RESERVED_PATHS:
            if prefix == reserved or prefix.startswith(reserved + "/"):
                raise ConfigError(f"ingestPrefixes: {prefix!r} overlaps {reserved}, which the collector serves itself")
    return tuple(dict.fromkeys(prefixes))


@dataclass(frozen=True)
class IngestPaths:
    """Every ingest path under every prefix: what the front door and the routes are built from."""

    prefixes: tuple[str, ...]
    events: dict[str, str]  # POST path → call type, or BATCH
    pixels: dict[str, tuple[str, ...]]  # call type → GET paths
    telemetry: tuple[str, ...]  # POST /<prefix>/m
    settings: dict[str, str]  # GET /<prefix>/projects/{write_key}/settings → its prefix

    @classmethod
    def of(cls, prefixes: tuple[str, ...]) -> IngestPaths:
        """The table for the ingestPrefixes setting; a bad prefix is a ConfigError naming it."""
        prefixes = check_prefixes(prefixes)

        def under(paths: tuple[str, ...]) -> tuple[str, ...]:
            # The call and batch paths are one segment below the prefix, so two prefixes never make
            # one path of two kinds; a pixel path may repeat (/x + /pixel/t, /x/pixel + /t): once.
            moved = (prefix + path.removeprefix(SPEC_PREFIX) for prefix in prefixes for path in paths)
            return tuple(dict.fromkeys(moved))

        return cls(
            prefixes=prefixes,
            events={path: kind for kind, paths in [*CALL_PATHS.items(), (BATCH, BATCH_PATHS)] for path in under(paths)},
            pixels={call: under(paths) for call, paths in PIXEL_PATHS.items()},
            telemetry=tuple(f"{prefix}/m" for prefix in prefixes),
            settings={f"{prefix}/projects/{{write_key}}/settings": prefix for prefix in prefixes},
        )


DEFAULT_PATHS: Final = IngestPaths.of((SPEC_PREFIX,))
