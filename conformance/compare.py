"""The compare stage: several runs' results.json → one matrix of verdicts, case by case.

    conformance compare before/ after/                      # a change to one implementation
    conformance compare ours=report-a/ theirs=report-b/     # several implementations, named

The first run is the baseline: a case it passes (PASS, NON_STRICT, INFORMATIONAL) that a later
run FAILs, ERRORs or XPASSes is a regression. Each run is checked against results.schema.json
first, so only the kit's own documents are compared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from conformance.reports import validate_results
from conformance.verdicts import BAD

GOOD = ("PASS", "NON_STRICT", "INFORMATIONAL")
SHORT = {"NON_STRICT": "NON_STR", "INFORMATIONAL": "INFO", "SKIPPED": "skip"}  # narrow columns
MISSING = "—"  # the case is not in that run (another kit version, or --cases/--tag)


class CompareError(ValueError):
    """An input is missing, unreadable or not a results document."""


@dataclass
class Run:
    name: str
    path: Path
    results: dict[str, Any]

    @property
    def verdicts(self) -> dict[str, str]:
        return {case["id"]: case["verdict"] for case in self.results["cases"]}


def load_run(argument: str) -> Run:
    """`[NAME=]PATH`, PATH a results.json or the report directory holding one; the name defaults
    to that directory's name (runs of one target before and after a change share its URL)."""
    name, _, raw = argument.rpartition("=")
    path = Path(raw)
    if path.is_dir():
        path = path / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        validate_results(results)
    except OSError as exc:
        raise CompareError(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise CompareError(f"{path} is not JSON: {exc}") from None
    except jsonschema.ValidationError as exc:
        raise CompareError(f"{path} is not a conformance results document: {exc.message}") from None
    return Run(name or path.resolve().parent.name, path, results)


def compare(runs: list[Run], every_case: bool = False) -> dict[str, Any]:
    """The matrix (only the cases whose verdicts differ, unless `every_case`) and the regressions
    against the first run."""
    verdicts = [run.verdicts for run in runs]
    ids = sorted(set().union(*verdicts))
    rows = []
    for case_id in ids:
        row = [v.get(case_id, MISSING) for v in verdicts]
        if every_case or len(set(row)) > 1:
            rows.append((case_id, row))
    baseline = verdicts[0]
    regressions = [
        (case_id, baseline[case_id], run.name, later[case_id])
        for run, later in zip(runs[1:], verdicts[1:], strict=True)
        for case_id in ids
        if baseline.get(case_id) in GOOD and later.get(case_id) in BAD
    ]
    notes = []
    for run in runs[1:]:
        first, other = runs[0].results, run.results
        if other["caseSetDigest"] != first["caseSetDigest"]:
            notes.append(
                f"{run.name} ran another case set (kit {other['kit']['version']}, {first['kit']['version']} for"
                f" {runs[0].name}, or other --cases/--tag): a case one run lacks shows {MISSING}"
            )
    return {"names": [run.name for run in runs], "rows": rows, "regressions": regressions, "notes": notes}


def render_text(runs: list[Run], matrix: dict[str, Any]) -> str:
    names = matrix["names"]
    width = max([len("case"), *(len(case_id) for case_id, _ in matrix["rows"])])
    columns = [max(len(name), 7) for name in names]
    lines = []
    for run in runs:
        counts = ", ".join(f"{verdict} {count}" for verdict, count in run.results["counts"].items() if count)
        complete = "" if run.results["complete"] else "  (INCOMPLETE: " + str(run.results.get("abortReason")) + ")"
        lines.append(f"{run.name}: level {run.results['level']}  ({counts})  {run.results['target']}{complete}")
    lines.append("")
    lines.append("  ".join(["case".ljust(width), *(name.ljust(c) for name, c in zip(names, columns, strict=True))]))
    for case_id, row in matrix["rows"]:
        cells = (SHORT.get(v, v).ljust(c) for v, c in zip(row, columns, strict=True))
        lines.append("  ".join([case_id.ljust(width), *cells]).rstrip())
    if not matrix["rows"]:
        lines.append("(every case has the same verdict in every run)")
    lines.append("")
    if matrix["regressions"]:
        lines.append(f"regressions against {names[0]}: {len(matrix['regressions'])}")
        for case_id, before, name, after in matrix["regressions"]:
            lines.append(f"  {case_id}: {before} → {after} in {name}")
    else:
        lines.append(f"no regressions against {names[0]}")
    lines += [f"note: {note}" for note in matrix["notes"]]
    return "\n".join(lines) + "\n"


def render_markdown(runs: list[Run], matrix: dict[str, Any]) -> str:
    names = matrix["names"]
    lines = ["| run | level | target |", "| --- | --- | --- |"]
    lines += [f"| {run.name} | {run.results['level']} | {run.results['target']} |" for run in runs]
    lines += ["", "| case | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for case_id, row in matrix["rows"]:
        lines.append(f"| `{case_id}` | " + " | ".join(row) + " |")
    if matrix["regressions"]:
        lines += ["", f"Regressions against {names[0]}:", ""]
        lines += [f"- `{c}`: {before} → {after} in {name}" for c, before, name, after in matrix["regressions"]]
    lines += [f"\nNote: {note}" for note in matrix["notes"]]
    return "\n".join(lines) + "\n"
