"""CPU cost per request of the collector's own code, without HTTP parsing or a load generator.

    python loadtests/inprocess.py                   # single events and batches of 100: µs of CPU each
    python loadtests/inprocess.py --kind batch --profile 25   # and the 25 costliest functions (cProfile)
    python loadtests/inprocess.py --baseline /tmp/main        # A/B: this checkout against another one

The ASGI app is driven directly, `--concurrency` requests in flight at a time, against a real
SQLite file with durable (FULL) commits, so the figures include the writer thread and group
commit, and the same is done for a bare Starlette route for scale. CPU time is the process's
(every thread), measured with time.process_time(). Like benchmark.py it prints and asserts nothing;
unlike it, it keeps the least CPU of several alternating rounds, which takes no load generator's
noise. A busy VM still moves it (±15 % between runs of the same two commits was seen), so compare
a change with --baseline, and more than once.
Like the benchmark's servers, the process runs pinned to one core (when there are two or more):
the event loop and the SQLite writer thread then hand over as they do in the benchmark. Unpinned,
each hand-over crosses cores and costs several times more (`--no-pin` to see it).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import benchmark  # noqa: E402  (the loadtests directory is not a package)
import payloads  # noqa: E402


def scope_for(path: str, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": ("203.0.113.7", 50123),
        "server": ("127.0.0.1", 8000),
    }


async def call(app: ASGIApp, scope: dict[str, Any], body: bytes) -> int:
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)  # a disconnect that never comes
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(dict(scope), receive, send)
    return status


async def drive(app: ASGIApp, requests: list[tuple[dict[str, Any], bytes]], concurrency: int) -> list[int]:
    """Each of `concurrency` workers sends its share of the requests one after another."""
    statuses: list[int] = []

    async def worker(share: list[tuple[dict[str, Any], bytes]]) -> None:
        for scope, body in share:
            statuses.append(await call(app, scope, body))

    await asyncio.gather(*(worker(requests[i::concurrency]) for i in range(concurrency)))
    return statuses


async def lifespan(app: ASGIApp) -> tuple[asyncio.Task[None], asyncio.Queue[Message]]:
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"start-up failed: {started}")
    return task, inbox


def collector_app(workdir: Path) -> ASGIApp:
    from collector.app import create_app
    from collector.settings import load

    config = workdir / "collector.yaml"
    benchmark.write_config(config)
    settings = load(config, environ={"COLLECTOR_STORAGE": f"sqlite:///{workdir / 'events.db'}"})
    app = create_app(settings)
    try:  # what `collector serve` does in each process (older checkouts did it in the app's lifespan)
        from collector.cli import quiet_garbage_collector  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        pass
    else:
        quiet_garbage_collector()
    return app


def bodies(kind: str, count: int) -> list[tuple[str, dict[str, str], bytes]]:
    sent_at = kind == "single"  # batch items carry no sentAt of their own: the envelope has it
    head, tail = payloads.track_event_template(benchmark.WRITE_KEY, sent_at=sent_at).split(payloads.MESSAGE_ID_SLOT)
    prefix = secrets.token_hex(4)
    if kind == "single":
        headers = payloads.browser_headers(benchmark.WRITE_KEY)
        return [("/v1/t", headers, f"{head}{prefix}-{n}{tail}".encode()) for n in range(count)]
    headers = payloads.node_headers(benchmark.WRITE_KEY)
    envelope_tail = '],"writeKey":"' + benchmark.WRITE_KEY + '","sentAt":"' + payloads.iso_ms() + '"}'
    out = []
    for n in range(count):
        items = ",".join(f"{head}{prefix}-{n}-{i}{tail}" for i in range(benchmark.BATCH_SIZE))
        out.append(("/v1/batch", headers, ('{"batch":[' + items + envelope_tail).encode()))
    return out


async def measure(name: str, app: ASGIApp, kind: str, count: int, concurrency: int, profile: int) -> dict[str, Any]:
    task, inbox = await lifespan(app)
    try:
        warm = [(scope_for(p, h), b) for p, h, b in bodies(kind, max(count // 10, concurrency))]
        await drive(app, warm, concurrency)
        requests = [(scope_for(p, h), b) for p, h, b in bodies(kind, count)]
        profiler = cProfile.Profile() if profile else None
        began, cpu_began = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        statuses = await drive(app, requests, concurrency)
        if profiler:
            profiler.disable()
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await task
    events = count * (benchmark.BATCH_SIZE if kind == "batch" else 1)
    failed = sum(1 for s in statuses if s != 200)
    row = {
        "name": name,
        "kind": kind,
        "requests": count,
        "failed": failed,
        "cpu_us_per_request": cpu / count * 1e6,
        "cpu_us_per_event": cpu / events * 1e6,
        "events_per_cpu_second": events / cpu if cpu else 0.0,
        "wall_requests_per_second": count / wall,
    }
    if profiler:
        print(f"--- {name} {kind}: the {profile} costliest functions by own time")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(profile)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["single", "batch", "both"], default="both")
    parser.add_argument("--requests", type=int, default=0, help="per measurement (default 4000 single, 200 batch)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the least CPU of each is kept")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest functions")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--no-pin", action="store_true", help="run on every core instead of the first one")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. a git worktree of main): its collector is measured in alternating rounds,"
        " each in a process of its own, and this checkout's CPU is printed as a ratio of its",
    )
    parser.add_argument("--checkout", type=Path, help=argparse.SUPPRESS)  # whose `collector` to import
    args = parser.parse_args(argv)
    if args.baseline:
        return against_baseline(args)
    if args.checkout:
        sys.path.insert(0, str(args.checkout.resolve()))
    server_cores, _ = benchmark.cores()
    if server_cores and not args.no_pin:
        os.sched_setaffinity(0, server_cores)
    try:
        import uvloop

        uvloop.install()  # what uvicorn runs on
    except ImportError:
        pass
    kinds = ["single", "batch"] if args.kind == "both" else [args.kind]
    rows = []
    with tempfile.TemporaryDirectory(prefix="collector-inprocess-") as tmp:
        for kind in kinds:
            count = args.requests or (4000 if kind == "single" else 200)
            best: dict[str, dict[str, Any]] = {}
            for round_ in range(args.rounds):
                for name in ("bare", "collector"):
                    app = benchmark.bare_app() if name == "bare" else collector_app(Path(tmp))
                    profile = args.profile if name == "collector" and round_ == 0 else 0
                    keep_least(best, name, asyncio.run(measure(name, app, kind, count, args.concurrency, profile)))
            rows += [best["bare"], best["collector"]]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'app':10} {'kind':7} {'requests':>8} {'failed':>6} {'CPU µs/req':>11} {'µs/event':>9} {'ev/CPU s':>12}")
    for row in rows:
        print(
            f"{row['name']:10} {row['kind']:7} {row['requests']:8d} {row['failed']:6d}"
            f" {row['cpu_us_per_request']:11.1f} {row['cpu_us_per_event']:9.1f} {row['events_per_cpu_second']:13,.0f}"
        )
    return 0


def keep_least(best: dict[Any, dict[str, Any]], key: Any, row: dict[str, Any]) -> None:
    """The least CPU of the rounds is the cost least disturbed by the machine."""
    if key not in best or row["cpu_us_per_request"] < best[key]["cpu_us_per_request"]:
        best[key] = row


def against_baseline(args: argparse.Namespace) -> int:
    """Alternating single-round processes of this checkout and the baseline; the least CPU of each."""
    checkouts = {"this": HERE.parent, "baseline": args.baseline.resolve()}
    best: dict[tuple[str, str, str], dict[str, Any]] = {}  # (checkout, kind, app) → row
    for round_ in range(args.rounds):
        for label in ("this", "baseline") if round_ % 2 == 0 else ("baseline", "this"):
            command = [sys.executable, str(Path(__file__).resolve()), "--kind", args.kind, "--rounds", "1", "--json"]
            command += ["--checkout", str(checkouts[label]), "--concurrency", str(args.concurrency)]
            command += ["--requests", str(args.requests)] if args.requests else []
            command += ["--no-pin"] if args.no_pin else []
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            for row in json.loads(done.stdout):
                row["checkout"] = label
                keep_least(best, (label, row["kind"], row["name"]), row)
    ratios = {}
    lines = []
    for kind in sorted({kind for _, kind, _ in best}, reverse=True):
        ours, theirs = best[("this", kind, "collector")], best[("baseline", kind, "collector")]
        ratios[kind] = ours["cpu_us_per_event"] / theirs["cpu_us_per_event"]
        bare = " / ".join(f"{best[(label, kind, 'bare')]['cpu_us_per_event']:.1f}" for label in ("this", "baseline"))
        lines.append(
            f"{kind:7} collector CPU µs/event: this {ours['cpu_us_per_event']:.1f}, baseline"
            f" {theirs['cpu_us_per_event']:.1f} → {ratios[kind]:.3f}× (bare route {bare})"
        )
    if args.json:
        print(json.dumps({"rows": list(best.values()), "cpu_ratio_to_baseline": ratios}, indent=2))
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
