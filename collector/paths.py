"""The event API's route table, read once from the spec (spec/calls/*.yaml and spec/batch.yaml
carry `paths:`), so the app, the OpenAPI document, metrics and the pixel share one source.

    CALL_PATHS   call type → its POST paths (/v1/track, /v1/t)
    BATCH_PATHS  the batch POST paths (/v1/batch, /v1/import, /v1/b)
    PIXEL_PATHS  call type → the GET paths a pixel <img> may use (its call paths + /v1/pixel/<type>)
    EVENT_PATHS  path → call type, or BATCH for the batch paths (what the front door answers itself)
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import yaml

from collector.schema.dsl import SpecError, default_spec_dir

CALL_TYPES: Final[tuple[str, ...]] = ("track", "identify", "page", "screen", "group", "alias")
BATCH: Final = "batch"  # the kind of a batch request, beside the call types
PIXEL_CALLS: Final[tuple[str, ...]] = ("track", "page")  # what an <img> beacon can say


def _paths_of(path: Path) -> tuple[str, ...]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    paths = doc.get("paths") if isinstance(doc, dict) else None
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p.startswith("/") for p in paths):
        raise SpecError(f"{path}: `paths:` must be a list of absolute paths")
    return tuple(paths)


def _read(spec_dir: Path) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    calls = {call: _paths_of(spec_dir / "calls" / f"{call}.yaml") for call in CALL_TYPES}
    return calls, _paths_of(spec_dir / "batch.yaml")


CALL_PATHS, BATCH_PATHS = _read(default_spec_dir())
PIXEL_PATHS: Final = {call: (*CALL_PATHS[call], f"/v1/pixel/{call}") for call in PIXEL_CALLS}
EVENT_PATHS: Final[dict[str, str]] = {
    path: call for call, paths in CALL_PATHS.items() for path in paths
} | dict.fromkeys(BATCH_PATHS, BATCH)
