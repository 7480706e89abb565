"""`collector serve | spec build | spec check | config schema | config check | events tail`."""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from collector import settings as settings_module
from collector.errors import ConfigError
from collector.logs import ACCESS_LOG_ENV, configure_logging
from collector.schema import build, dsl
from collector.schema.spec import load as load_spec

DEV_CONFIG = Path("collector.yaml")


def quiet_garbage_collector() -> None:
    """Keeps the cyclic GC out of the hot path, once per server process, after the app is built.

    Requests allocate many short-lived containers (parsing the benchmark's batch of 100 events
    alone makes 1,402 dicts and lists) that reference counting frees, and the pipeline makes no
    cycles, yet the default thresholds start a collection every 700 allocations and rescan the
    older generations, where the ~33k objects of the modules, schemas and validators live. That
    was 28 % of the event loop's time on batches (py-spy). Objects alive at start-up are frozen
    out of collections, and young collections start every 10,000 allocations; cycles are still
    collected. (50,000 saved no more CPU and ended the 10-minute soak at 83 MB RSS; 10,000 at
    82 MB; the defaults at 79 MB.)"""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def worker_app() -> Any:
    """uvicorn's factory, in every server process (`--workers N` starts the app in each): the
    process-wide set-up `serve` owns, then the app."""
    from collector.app import create_app
    from collector.http import connection
    from collector.logs import configure_worker_logging

    configure_worker_logging()  # a worker process inherits no logging set-up from `serve`
    settings = settings_module.load()
    connection.configure(settings)  # before uvicorn accepts a connection in this process
    app = create_app(settings)
    quiet_garbage_collector()
    return app


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    for name in ("storage", "profiles", "config"):
        value = getattr(args, name)
        if value:
            os.environ["COLLECTOR_" + name.upper()] = value
    if not os.environ.get("COLLECTOR_CONFIG"):
        if not DEV_CONFIG.exists():
            credentials = settings_module.write_dev_config(DEV_CONFIG)
            print(
                "No config given: created collector.yaml with a development workspace.\n"
                f"  workspace:   {credentials['workspace']}\n"
                f"  write key:   {credentials['write_key']}\n"
                f"  token:       {credentials['token']}   (profile API: Authorization: Bearer …)\n"
                f"  admin token: {credentials['admin_token']}   (read-back API /v1/events)",
                flush=True,
            )
        else:
            print("No config given: using the development workspace in ./collector.yaml", flush=True)
        os.environ["COLLECTOR_CONFIG"] = str(DEV_CONFIG.resolve())
    try:
        loaded = settings_module.load()
        from collector.app import create_app

        create_app(loaded)  # storage URLs, plans, spec: fail here with a sentence, not a uvicorn traceback
    except ConfigError as exc:
        print(f"collector: configuration error: {exc}", file=sys.stderr)
        return 2
    if loaded.config_path and Path(loaded.config_path).resolve() == DEV_CONFIG.resolve():
        for write_key, source in loaded.write_keys.items():
            print(f"  source {source.id}: write key {write_key}", flush=True)
    shared_dir = None
    if args.workers > 1 and not loaded.workers_dir:  # shared by the workers (removed at exit)
        shared_dir = tempfile.mkdtemp(prefix="collector-workers-")
        os.environ["COLLECTOR_WORKERS_DIR"] = shared_dir
    os.environ[ACCESS_LOG_ENV] = "1" if args.access_log else ""  # the workers configure logging from it
    configure_logging(args.access_log)
    print(f"collector: storage {loaded.storage}, listening on http://{args.host}:{args.port}", flush=True)
    try:
        uvicorn.run(
            "collector.cli:worker_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            loop="uvloop",
            http="collector.http.connection:GuardedHttpToolsProtocol",  # httptools + limits and timeouts
            timeout_keep_alive=loaded.keep_alive_timeout_seconds,  # type: ignore[arg-type] # a float works
            access_log=False,
            log_config=None,  # uvicorn's loggers go through our JSON handler (root)
            proxy_headers=False,  # X-Forwarded-For is handled per trusted_proxies, not by uvicorn
            server_header=False,
            log_level="warning",
            timeout_graceful_shutdown=10,
        )
    finally:
        if shared_dir is not None:
            shutil.rmtree(shared_dir, ignore_errors=True)
    return 0


def spec_command(args: argparse.Namespace) -> int:
    spec_dir = Path(args.spec_dir) if args.spec_dir else dsl.default_spec_dir()
    try:
        if args.spec_action == "build":
            for path in build.write(spec_dir):
                print(f"wrote {path}")
            return 0
        if args.spec_action == "table":
            from collector import spec_table

            loaded = load_spec(spec_dir)
            if args.write:
                changed = spec_table.write_readme(Path(args.write), loaded)
                print(f"{args.write}: {'updated' if changed else 'already up to date'}")
            else:
                print(spec_table.render(loaded))
            return 0
        problems = build.check(spec_dir)
    except dsl.SpecError as exc:
        print(f"collector: spec error: {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{spec_dir}/schemas is up to date")
    return 1 if problems else 0


def config_command(args: argparse.Namespace) -> int:
    from collector import config_schema

    if args.config_action == "schema":
        print(config_schema.dumps(config_schema.build()), end="")
        return 0
    try:
        settings_module.load(args.file, environ={})
    except ConfigError as exc:
        print(f"collector: configuration error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.file}: valid")
    return 0


def tail(args: argparse.Namespace) -> int:
    """Print stored events as JSON lines, following new ones (read-back API)."""
    import httpx

    from collector.http.readback import encode_cursor

    headers = {"Authorization": f"Bearer {args.admin_token}"} if args.admin_token else {}
    cursor = None
    params: dict[str, str] = {"limit": str(args.limit)}
    for name in ("type", "event", "userId"):
        value = getattr(args, name.lower())
        if value:
            params[name] = value
    with httpx.Client(base_url=args.url, headers=headers, timeout=40) as client:
        while True:
            query = params | ({"cursor": cursor} if cursor else {}) | ({"wait": "10"} if args.follow else {})
            try:
                answer = client.get("/v1/events", params=query)
            except httpx.HTTPError as exc:
                print(f"collector: cannot reach {args.url}: {exc}", file=sys.stderr)
                return 2
            if answer.status_code != 200:
                print(f"collector: {answer.status_code} {answer.text}", file=sys.stderr)
                return 1
            page = answer.json()
            for item in page["data"]:
                print(json.dumps(item["event"]), flush=True)
            if page["data"]:
                cursor = encode_cursor(page["data"][-1]["position"])
            elif not args.follow:
                return 0
            if not args.follow and not page["meta"]["nextCursor"]:
                return 0


def plan_command(args: argparse.Namespace) -> int:
    from collector import plan_tools
    from collector.schema.dsl import SpecError
    from collector.schema.plans import default_plans_dir, load_plans

    plans_dir = Path(args.plans_dir) if args.plans_dir else default_plans_dir()
    try:
        if args.plan_action == "lint":
            problems = plan_tools.lint(plans_dir)
            for problem in problems:
                print(problem, file=sys.stderr)
            if not problems:
                print(f"{plans_dir}: plans are valid")
            return 1 if problems else 0
        if args.plan_action == "check":
            plans, _ = load_plans(plans_dir)
            if args.plan not in plans:
                print(
                    f"collector: no plan {args.plan!r} in {plans_dir} (have: {', '.join(sorted(plans))})",
                    file=sys.stderr,
                )
                return 2
            report = plan_tools.check_file(Path(args.file), plans[args.plan])
            print(report.table())
            return 1 if report.rows else 0
        if args.plan_action == "infer":
            print(plan_tools.dump_plan(plan_tools.infer([Path(f) for f in args.files], args.name)), end="")
            return 0
        changes = plan_tools.diff(Path(args.old), Path(args.new))
        for kind, text in changes:
            print(f"{kind:<10}  {text}")
        breaking = sum(1 for kind, _ in changes if kind == "breaking")
        print(f"{len(changes)} changes, {breaking} breaking")
        return 1 if breaking else 0
    except (SpecError, ValueError, OSError) as exc:
        print(f"collector: {exc}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="collector", description="Self-hostable Segment-compatible event collector.")
    commands = main.add_subparsers(dest="command", required=True)

    run = commands.add_parser("serve", help="start the HTTP server")
    run.add_argument("--host", default=os.environ.get("COLLECTOR_HOST", "127.0.0.1"))
    run.add_argument("--port", type=int, default=int(os.environ.get("COLLECTOR_PORT", "8088")))
    run.add_argument("--storage", help="event storage URL (default sqlite:///collector.db)")
    run.add_argument("--profiles", help="profile storage URL (default: the event storage)")
    run.add_argument("--config", help="YAML config file (write keys, tokens, limits); env COLLECTOR_CONFIG")
    run.add_argument("--workers", type=int, default=1, help="worker processes")
    run.add_argument("--access-log", action="store_true", help="log every request as JSON (with its request id)")
    run.set_defaults(handler=serve)

    spec_parser = commands.add_parser(
        "spec", help="generate or check the JSON Schemas from spec/*.yaml; `table`: README's levels table"
    )
    spec_parser.add_argument("spec_action", choices=["build", "check", "table"])
    spec_parser.add_argument("--write", metavar="README", help="table: rewrite README's levels table in place")
    spec_parser.add_argument("--spec-dir", help="spec directory (default: the project's spec/)")
    spec_parser.set_defaults(handler=spec_command)

    plan = commands.add_parser("plan", help="tracking plans: lint, check recorded events, infer, diff")
    plan.add_argument("--plans-dir", help="plan directory (default: COLLECTOR_PLANS_DIR or spec/plans)")
    plan_actions = plan.add_subparsers(dest="plan_action", required=True)
    plan_actions.add_parser("lint", help="plan files valid, names unique, types known")
    check_parser = plan_actions.add_parser("check", help="validate recorded events (JSON lines) against a plan")
    check_parser.add_argument("file")
    check_parser.add_argument("--plan", required=True, help="plan name")
    infer_parser = plan_actions.add_parser("infer", help="draft a plan (YAML on stdout) from recorded events")
    infer_parser.add_argument("files", nargs="+")
    infer_parser.add_argument("--name", default="inferred")
    diff_parser = plan_actions.add_parser("diff", help="breaking vs compatible changes between two plan files")
    diff_parser.add_argument("old")
    diff_parser.add_argument("new")
    plan.set_defaults(handler=plan_command)

    config = commands.add_parser("config", help="the config file: its JSON Schema, or check a file")
    config_actions = config.add_subparsers(dest="config_action", required=True)
    config_actions.add_parser("schema", help="print the JSON Schema of the config file (for editors)")
    config_check = config_actions.add_parser("check", help="check a config file as `serve` would")
    config_check.add_argument("file")
    config.set_defaults(handler=config_command)

    events = commands.add_parser("events", help="read stored events")
    events_commands = events.add_subparsers(dest="events_action", required=True)
    tail_parser = events_commands.add_parser("tail", help="print stored events as JSON lines")
    tail_parser.add_argument("--url", default=os.environ.get("COLLECTOR_URL", "http://127.0.0.1:8088"))
    tail_parser.add_argument("--admin-token", default=os.environ.get("COLLECTOR_ADMIN_TOKEN"))
    tail_parser.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    tail_parser.add_argument("--type")
    tail_parser.add_argument("--event")
    tail_parser.add_argument("--userid", dest="userid")
    tail_parser.add_argument("--limit", type=int, default=100)
    tail_parser.set_defaults(handler=tail)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
