"""`conformance run | list | lint | compare`.

Exit codes: 0 conformant (no FAIL, ERROR or XPASS, run complete); 1 conformance failures;
2 usage, configuration or case-file errors, or a target unreachable before any case ran.
`compare`: 0, or 1 with --fail-on-regression when a later run regressed; 2 for unreadable input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from conformance import KIT_VERSION
from conformance.casefile import CaseFileError, load_cases, select
from conformance.engine import PROFILES, RunOptions, Unreachable, claimed_profiles, exit_code, run
from conformance.reports import summarize, write_all
from conformance.verdicts import read_known_failing

USAGE_ERROR = 2


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="conformance", description="Conformance kit for Segment-compatible collectors.")
    top.add_argument("--version", action="version", version=f"conformance {KIT_VERSION}")
    commands = top.add_subparsers(dest="command", required=True)

    runner = commands.add_parser("run", help="run the cases against a target")
    runner.add_argument("--target", required=True, help="base URL of the collector, e.g. http://127.0.0.1:8088")
    runner.add_argument("--write-key", required=True, help="a write key of a dedicated test source")
    runner.add_argument("--token", help="profile-API bearer token (enables the `profiles` feature)")
    runner.add_argument("--other-token", help="a token of a second workspace (enables `second_workspace`)")
    runner.add_argument(
        "--quarantine-write-key", help="a write key of a source quarantining invalid messages (enables `quarantine`)"
    )
    runner.add_argument(
        "--strict-write-key",
        help="a write key of a source rejecting quality violations (qualityEnforcement: reject): quality_reject",
    )
    runner.add_argument(
        "--profile",
        default="segment",
        help="comma-separated claims: segment (always), collector, inspect (default segment; core = segment,collector)",
    )
    runner.add_argument("--inspect-url", help="base URL of the read-back API (GET /v1/events)")
    runner.add_argument("--inspect-token", help="bearer token for the read-back API")
    runner.add_argument("--inspect-adapter", help="module:attribute with fetch(field, value, wait) -> list[dict]")
    runner.add_argument("--cases", action="append", default=[], help="glob over case ids (repeatable)")
    runner.add_argument("--tag", action="append", default=[], help="only cases with this tag (repeatable)")
    runner.add_argument("--known-failing", type=Path, help="file of case ids expected to fail")
    runner.add_argument("--workers", type=int, default=4)
    runner.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request")
    runner.add_argument("--settle", type=float, default=2.0, help="seconds to wait for a late write (diagnosis)")
    runner.add_argument(
        "--consistency",
        choices=["immediate", "eventual"],
        default="immediate",
        help="eventual: stored checks judge what is there after --settle s; readable at once becomes a SHOULD",
    )
    runner.add_argument(
        "--reuse-connections",
        action="store_true",
        help="send every case over shared keep-alive connections (default: each case opens its own)",
    )
    runner.add_argument("--report-dir", type=Path, default=Path("conformance-report"))

    lister = commands.add_parser("list", help="list the cases")
    lister.add_argument("--cases", action="append", default=[])
    lister.add_argument("--tag", action="append", default=[])
    lister.add_argument("--json", action="store_true")

    linter = commands.add_parser("lint", help="check the case files")
    linter.add_argument("--spec-dir", type=Path, help="the spec/ directory (default: found next to the kit)")

    comparer = commands.add_parser("compare", help="a matrix of verdicts across runs (the first is the baseline)")
    comparer.add_argument(
        "runs", nargs="+", metavar="[NAME=]RUN", help="a results.json or its report directory, optionally named"
    )
    comparer.add_argument("--all", action="store_true", help="every case, not only those whose verdicts differ")
    comparer.add_argument("--markdown", type=Path, help="also write the matrix as a Markdown table to this file")
    comparer.add_argument(
        "--fail-on-regression", action="store_true", help="exit 1 when a case the first run passes fails in another"
    )
    return top


def command_run(args: argparse.Namespace) -> int:
    try:
        profiles = claimed_profiles([p.strip() for p in args.profile.split(",") if p.strip()])
    except ValueError as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        return USAGE_ERROR
    if "inspect" in profiles and not (args.inspect_url or args.inspect_adapter):
        print("conformance: --profile inspect needs --inspect-url or --inspect-adapter", file=sys.stderr)
        return USAGE_ERROR
    known: list[str] = []
    if args.known_failing:
        try:
            known = read_known_failing(args.known_failing)
        except OSError as exc:
            print(f"conformance: cannot read --known-failing: {exc}", file=sys.stderr)
            return USAGE_ERROR
    cases = select(load_cases(), args.cases, args.tag)
    if not cases:
        print("conformance: no case matches --cases/--tag", file=sys.stderr)
        return USAGE_ERROR
    options = RunOptions(
        target=args.target,
        write_key=args.write_key,
        token=args.token,
        other_token=args.other_token,
        quarantine_write_key=args.quarantine_write_key,
        strict_write_key=args.strict_write_key,
        profiles=profiles,
        inspect_url=args.inspect_url,
        inspect_token=args.inspect_token,
        inspect_adapter=args.inspect_adapter,
        known_failing=known,
        workers=args.workers,
        timeout=args.timeout,
        settle=args.settle,
        consistency=args.consistency,
        reuse_connections=args.reuse_connections,
    )
    try:
        results = run(cases, options)
    except Unreachable as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except (ValueError, ImportError) as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        return USAGE_ERROR
    paths = write_all(results, args.report_dir, options.attachments)
    counts = ", ".join(f"{verdict} {count}" for verdict, count in results["counts"].items())
    print(f"level: {results['level']}  ({counts})")
    summary = summarize(results)
    print(summary["inspected"])
    for item in summary["fixFirst"]:
        print(f"fix first, {item['area']} ({len(item['cases'])}): {item['sentence']}")
    for case in results["cases"]:
        if case["verdict"] in ("FAIL", "ERROR", "XPASS"):
            print(f"  {case['verdict']:6} {case['id']}: {case['reason'][:300]}")
    print("reports: " + ", ".join(str(p) for p in paths))
    return exit_code(results)


def command_list(args: argparse.Namespace) -> int:
    cases = select(load_cases(), args.cases, args.tag)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": c.id,
                        "title": c.title,
                        "profile": c.profile,
                        "basis": c.basis if c.profile == "inspect" else c.profile,
                        "status": c.status,
                        "requires": c.requires,
                    }
                    for c in cases
                ],
                indent=1,
            )
        )
    else:
        for case in cases:
            extra = f" requires={','.join(case.requires)}" if case.requires else ""
            print(f"{case.id:60} {case.profile:9} {case.status:9}{extra}  {case.title}")
        counts = Counter(case.profile for case in cases)
        print(f"{len(cases)} cases (" + ", ".join(f"{name} {counts[name]}" for name in PROFILES) + ")")
    return 0


def command_lint(args: argparse.Namespace) -> int:
    from conformance.lint import find_spec_dir, lint

    spec_dir = args.spec_dir or find_spec_dir()
    if spec_dir is None:
        print("conformance lint: no spec/ directory found; pass --spec-dir", file=sys.stderr)
        return USAGE_ERROR
    problems, count = lint(spec_dir)
    for problem in problems:
        print(problem)
    print(f"{count} cases, {len(problems)} problems")
    return 0 if not problems else 1


def command_compare(args: argparse.Namespace) -> int:
    from conformance.compare import CompareError, compare, load_run, render_markdown, render_text

    try:
        runs = [load_run(argument) for argument in args.runs]
    except CompareError as exc:
        print(f"conformance compare: {exc}", file=sys.stderr)
        return USAGE_ERROR
    if len({run.name for run in runs}) < len(runs):
        print("conformance compare: two runs share a name; name them: NAME=PATH", file=sys.stderr)
        return USAGE_ERROR
    matrix = compare(runs, every_case=args.all)
    print(render_text(runs, matrix), end="")
    if args.markdown:
        args.markdown.write_text(render_markdown(runs, matrix), encoding="utf-8")
    return 1 if args.fail_on_regression and matrix["regressions"] else 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "run":
            return command_run(args)
        if args.command == "list":
            return command_list(args)
        if args.command == "compare":
            return command_compare(args)
        return command_lint(args)
    except CaseFileError as exc:
        print(f"conformance: case file error: {exc}", file=sys.stderr)
        return USAGE_ERROR
