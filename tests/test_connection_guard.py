"""The connection guard (collector/http/connection.py) against real sockets and a real
`collector serve`: header limits at, one under and one over; slow clients cut off by the header
and body timeouts while a normal client is served; the connection cap; keep-alive idling. The
previous main accepted a 20 MiB header and held slow connections forever: every test here fails
on it."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from helpers import ADMIN, WRITE_KEY, Server, basic, bearer, start_server, write_config

HEADER_TIMEOUT = 2.0
BODY_IDLE_TIMEOUT = 1.5
BODY_TIMEOUT = 4.0
KEEP_ALIVE = 1.0
GUARD_ENV = {
    "COLLECTOR_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
    "COLLECTOR_BODY_IDLE_TIMEOUT_SECONDS": str(BODY_IDLE_TIMEOUT),
    "COLLECTOR_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
    "COLLECTOR_KEEP_ALIVE_TIMEOUT_SECONDS": str(KEEP_ALIVE),
    "COLLECTOR_MAX_CONNECTIONS": "1000",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("guard")
    running = start_server(tmp, write_config(tmp / "c.yaml"), f"sqlite:///{tmp}/events.db", env=GUARD_ENV)
    yield running
    running.stop()


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def exchange(server: Server, data: bytes, wait: float = 5.0) -> tuple[bytes, bool]:
    """(all the server sent, whether it closed the connection) for `data` sent in one write."""
    with socket.create_connection(address(server)) as sock:
        sock.sendall(data)
        sock.settimeout(wait)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
            return received, True
        except TimeoutError:
            return received, False


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body) from a keep-alive connection."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def status_and_body(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), orjson.loads(body)


def request(headers: list[tuple[str, str]], target: str = "/health") -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def assert_refused(answer: bytes, closed: bool, status: int, code: str) -> None:
    got_status, body = status_and_body(answer)
    assert (got_status, body["code"], body["status"]) == (status, code, status), answer[:300]
    assert b"connection: close" in answer.lower() and closed
    assert {"message", "moreInfo"} <= body.keys()


def assert_served(answer: bytes) -> None:
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]


def stored_events(server: Server, event: str) -> list[dict[str, object]]:
    answer = httpx.get(server.url + "/v1/events", params={"event": event, "limit": 1000}, headers=bearer(ADMIN))
    assert answer.status_code == 200, answer.text
    data: list[dict[str, object]] = answer.json()["data"]
    return data


# Header limits: one header (name + value) 8192, the head 32768, 100 headers, the URL 8192.


def test_one_header_at_the_limit_is_served_and_one_byte_over_is_431(server: Server) -> None:
    name = "X-Big"
    at_limit = "a" * (8192 - len(name))
    assert_served(exchange(server, request([(name, at_limit), ("Connection", "close")]))[0])
    assert_refused(*exchange(server, request([(name, at_limit + "a")])), 431, "headers_too_large")


def test_the_header_count_limit(server: Server) -> None:
    # Host is the first; Connection: close the 100th.
    many = [(f"X-{index}", "v") for index in range(98)] + [("Connection", "close")]
    assert_served(exchange(server, request(many))[0])
    assert_refused(*exchange(server, request([("X-extra", "v"), *many])), 431, "headers_too_large")


def test_the_whole_head_limit(server: Server) -> None:
    # Five 7 KB headers: each under the one-header limit, together over the head limit.
    assert_refused(
        *exchange(server, request([(f"X-{index}", "a" * 7000) for index in range(5)])), 431, "headers_too_large"
    )
    assert_served(
        exchange(server, request([(f"X-{index}", "a" * 7000) for index in range(4)] + [("Connection", "close")]))[0]
    )


def test_a_header_still_arriving_is_cut_off_before_it_is_whole(server: Server) -> None:
    """A 20 MiB header: refused once the head passes 32 KB, long before it ends (the previous
    main stored it as a 20 MiB event)."""
    with socket.create_connection(address(server)) as sock:
        sock.sendall(b"POST /v1/t HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: ")
        sent = 0
        try:
            while sent < 20 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(5)
        try:
            answer = sock.recv(65536)
        except ConnectionResetError:
            answer = b""  # the reset can overtake the answer when the client is still writing
    assert sent < 20 * 1024 * 1024, "the server read a 20 MiB header"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")


def test_the_url_limit(server: Server) -> None:
    path = "/health?" + "a" * (8192 - len("/health?"))
    assert_served(exchange(server, request([("Connection", "close")], target=path))[0])
    assert_refused(*exchange(server, request([], target=path + "a")), 414, "url_too_long")


def test_malformed_http_gets_the_one_error_shape(server: Server) -> None:
    assert_refused(
        *exchange(server, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64), 400, "invalid_http"
    )
    assert_refused(
        *exchange(server, b"POST /v1/t HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello"),
        400,
        "invalid_http",
    )


# Slow clients.


async def slow_head(server: Server, opened: list[float], closed: list[float]) -> None:
    """A client sending its request line and headers a byte every 0.3 s, for ever."""
    reader, writer = await asyncio.open_connection(*address(server))
    opened.append(time.monotonic())
    try:
        for byte in b"POST /v1/t HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000:
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(65536), 0.3) == b"" or reader.at_eof():
                    break
            except TimeoutError:
                continue
            break  # the server answered: 408 and closed
    except ConnectionError:
        pass
    closed.append(time.monotonic())
    writer.close()


async def normal_requests(server: Server, until: float) -> list[float]:
    """Latencies of one track event every 50 ms, each on a new connection."""
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=server.url, headers=basic(WRITE_KEY), timeout=10) as client:
        index = 0
        while time.monotonic() < until:
            started = time.monotonic()
            answer = await client.post(
                "/v1/track",
                json={"type": "track", "event": "Normal", "userId": "u1", "messageId": f"normal-{index}"},
                headers={"Connection": "close"},
            )
            assert answer.status_code == 200
            latencies.append(time.monotonic() - started)
            index += 1
            await asyncio.sleep(0.05)
    return latencies


def test_500_slow_header_clients_are_closed_by_the_header_timeout_while_normal_clients_are_served(
    server: Server,
) -> None:
    async def run() -> tuple[list[float], list[float], list[float]]:
        opened: list[float] = []
        closed: list[float] = []
        slow = [asyncio.create_task(slow_head(server, opened, closed)) for _ in range(500)]
        latencies = await normal_requests(server, until=time.monotonic() + HEADER_TIMEOUT + 1.5)
        await asyncio.wait_for(asyncio.gather(*slow), 30)
        return opened, closed, latencies

    opened, closed, latencies = asyncio.run(run())
    held = [end - start for start, end in zip(sorted(opened), sorted(closed), strict=True)]
    print(
        f"\nslow heads: {len(opened)} connections, closed after {min(held):.2f}–{max(held):.2f} s; "
        f"normal requests meanwhile: {len(latencies)}, p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )
    assert len(closed) == 500
    assert HEADER_TIMEOUT - 0.5 <= min(held) and max(held) < HEADER_TIMEOUT + 5
    assert len(latencies) >= 10 and statistics.median(latencies) < 0.5
    assert len(stored_events(server, "Normal")) == len(latencies)


async def slow_body(server: Server, seconds_per_byte: float, index: int) -> tuple[bytes, float]:
    body = orjson.dumps({"type": "track", "event": "Slow", "userId": "u1", "messageId": f"slow-body-{index}"})
    reader, writer = await asyncio.open_connection(*address(server))
    started = time.monotonic()
    head = (
        f"POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {basic(WRITE_KEY)['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode())
    answer = b""
    try:
        for byte in body:
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(65536), seconds_per_byte)
            except TimeoutError:
                continue
            break
    except ConnectionError:
        pass
    writer.close()
    return answer, time.monotonic() - started


def test_slow_bodies_are_cut_off_by_the_idle_and_the_total_body_timeout_and_nothing_is_stored(
    server: Server,
) -> None:
    async def run() -> list[tuple[bytes, float]]:
        trickling = [slow_body(server, 1.0, index) for index in range(100)]  # within the idle timeout
        stalled = [slow_body(server, 60.0, 100 + index) for index in range(100)]  # one byte, then nothing
        return await asyncio.wait_for(asyncio.gather(*trickling, *stalled), 30)

    results = asyncio.run(run())
    trickled, stalled = results[:100], results[100:]
    for answer, _ in results:
        assert_refused(answer, True, 408, "request_timeout")
    assert all(BODY_TIMEOUT - 0.5 <= took < BODY_TIMEOUT + 3 for _, took in trickled)
    assert all(BODY_IDLE_TIMEOUT - 0.5 <= took < BODY_IDLE_TIMEOUT + 3 for _, took in stalled)
    print(
        f"\nslow bodies: 100 trickling closed after {max(t for _, t in trickled):.2f} s at most, "
        f"100 stalled after {max(t for _, t in stalled):.2f} s at most"
    )
    assert stored_events(server, "Slow") == []


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(server: Server) -> None:
    started = time.monotonic()
    answer, closed = exchange(server, b"", wait=HEADER_TIMEOUT + 3)
    assert (answer, closed) == (b"", True)
    assert time.monotonic() - started >= HEADER_TIMEOUT - 0.5


def test_an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not(server: Server) -> None:
    with socket.create_connection(address(server)) as sock:
        sock.settimeout(5)
        for _ in range(3):  # three requests, each within the keep-alive time of the last
            sock.sendall(request([]))
            assert_served(read_response(sock))
            time.sleep(KEEP_ALIVE / 2)
        started = time.monotonic()
        assert sock.recv(65536) == b""
        assert time.monotonic() - started < KEEP_ALIVE + 1


def test_past_the_connection_cap_a_new_connection_gets_503_and_the_server_recovers(tmp_path: Path) -> None:
    server = start_server(
        tmp_path,
        write_config(tmp_path / "c.yaml"),
        f"sqlite:///{tmp_path}/e.db",
        env={"COLLECTOR_MAX_CONNECTIONS": "20"},
    )
    try:
        held = [socket.create_connection(address(server)) for _ in range(20)]
        try:
            time.sleep(0.3)  # the server has accepted them all
            answer, closed = exchange(server, b"")
            assert_refused(answer, closed, 503, "too_many_connections")
            assert b"retry-after: 5" in answer.lower()
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.3)
        assert_served(exchange(server, request([("Connection", "close")]))[0])
    finally:
        server.stop()
