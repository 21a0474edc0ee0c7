"""Hostile clients against `kernel serve`, over raw sockets on loopback: connections that
send nothing or trickle their headers are closed after `--header-timeout`, headers past
64 KiB are answered 431, clients that stop reading a response or WebSocket are cut off
after `--send-timeout`, new connections past the open-file limit are closed without a
flood of tracebacks, and JSON nested too deeply is a 400."""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import re
import resource
import select
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from kernel import connections
from tests.kernel.slow_clients import MIB, read_paced, read_until_closed, small_window

pytestmark = pytest.mark.usefixtures("test_plugins")

TIMEOUT = 0.5  # --header-timeout of these servers
SEND_TIMEOUT = 1.0  # --send-timeout of `flooding`
SOFT, HARD = 128, 256  # open-file limits of `limited`; its connections' cap is 256 - 256 // 4
CAP = 192


@pytest.fixture
def server(serve):
    return serve("--plugins", "hello", "--header-timeout", str(TIMEOUT))


@pytest.fixture
def flooding(serve):
    """A server with much to send (`/flood?mb=`, `/flood/ws?mb=`)."""
    return serve("--plugins", "flood", "--send-timeout", str(SEND_TIMEOUT))


@pytest.fixture
def limited(serve, monkeypatch):
    """A server started with low limits on open files, set in its process before it runs."""
    with monkeypatch.context() as patch:
        patch.setattr(subprocess, "Popen", functools.partial(subprocess.Popen, preexec_fn=functools.partial(
            resource.setrlimit, resource.RLIMIT_NOFILE, (SOFT, HARD))))
        started = serve("--plugins", "hello", ready=False)
    return started.wait_ready()


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def read_response(sock: socket.socket) -> bytes:
    """One response's status line and headers; its body is read and dropped."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE)[1])
    while len(body) < length:
        body += sock.recv(65536)
    return head


def trickle(sock: socket.socket) -> float:
    """Send a header line every 0.1 s; the seconds until the server closes the connection."""
    started = time.monotonic()
    for _ in range(50):
        try:
            sock.sendall(b"X-Slow: 1\r\n")
        except OSError:  # closed as we wrote
            return time.monotonic() - started
        if select.select([sock], [], [], 0.1)[0]:
            assert read_until_closed(sock)[0] == b""
            return time.monotonic() - started
    raise AssertionError("the server kept a trickling connection open for 5 s")


def test_a_connection_that_sends_nothing_is_closed(server):
    with connect(server) as sock:
        data, took = read_until_closed(sock)
    assert data == b""
    assert TIMEOUT - 0.2 < took < TIMEOUT + 1


def test_a_request_whose_headers_trickle_in_is_closed(server):
    with connect(server) as sock:
        sock.sendall(b"GET /-/health HTTP/1.1\r\nHost: x\r\n")
        assert trickle(sock) < TIMEOUT + 1


def test_a_kept_alive_connection_trickling_its_next_request_is_closed(server):
    # uvicorn's keep-alive timer stops at the next request's first byte.
    with connect(server) as sock:
        sock.sendall(b"GET /-/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /-/health HTTP/1.1\r\nHost: x\r\n")
        assert trickle(sock) < TIMEOUT + 1


def test_a_slow_body_and_requests_after_it_are_served(server):
    # The deadline is for headers: a body may take longer, and so may answering.
    body = b"[1.0, 2.0, 3.0]"
    with connect(server) as sock:
        sock.sendall(b"POST /hello/nosuch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        for piece in (body[:5], body[5:10], body[10:]):
            time.sleep(TIMEOUT * 0.8)
            sock.sendall(piece)
        assert read_response(sock).startswith(b"HTTP/1.1 404")
        sock.sendall(b"GET /-/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")


def test_a_slow_body_answered_before_it_ends_is_not_cut_off(server):
    # The answer needs no body (405), but the client still sends it, slowly: the deadline
    # for the next request's headers starts at the end of this one, not of its answer.
    with connect(server) as sock:
        sock.sendall(b"POST /-/health HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 405")
        for piece in (b"01234", b"56789", b"abcde"):
            time.sleep(TIMEOUT * 0.8)
            sock.sendall(piece)
        sock.sendall(b"GET /-/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")


def test_headers_past_64_kib_are_answered_431(server):
    lines = b"".join(b"X-Header-%05d: some value\r\n" % i for i in range(3000))  # 90 KB in short lines
    with connect(server) as sock:
        sock.sendall(b"GET /-/health HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
        data, _ = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431 ")
    with connect(server) as sock:  # a large cookie within the limit
        sock.sendall(b"GET /-/health HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 60_000 + b"\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
    assert "Traceback" not in server.output()


def test_a_header_that_never_ends_is_answered_431_once_past_64_kib(server):
    with connect(server) as sock:
        sock.sendall(b"GET /-/health HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        for _ in range(64):  # 1 MiB at most, never ending the value
            if select.select([sock], [], [], 0.01)[0]:
                break
            sock.sendall(b"v" * 16384)
        data, took = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431 ")  # not the header deadline, which says nothing
    assert took < TIMEOUT


def test_a_client_that_stops_reading_a_response_is_cut_off(flooding):
    with small_window(flooding) as sock:
        sock.sendall(b"GET /flood?mb=64 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(3 * SEND_TIMEOUT)  # reading nothing
        data, took = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200") and len(data) < 64 * MIB  # the rest was dropped
    assert took < 5
    assert "aborted a connection whose client took nothing for 1s" in flooding.output()


def test_a_slow_client_that_keeps_reading_is_not_cut_off(flooding):
    with small_window(flooding) as sock:
        # More than the sockets' buffers hold (a few MiB), so the server waits on this client.
        sock.sendall(b"GET /flood?mb=32 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data, took = read_paced(sock)
    assert took > 2 * SEND_TIMEOUT
    assert data.endswith(b"x" * 1000) and len(data.partition(b"\r\n\r\n")[2]) == 32 * MIB
    assert "aborted" not in flooding.output()


def test_a_closed_connection_with_a_little_left_unsent_is_cut_off():
    """Below the point where writing pauses, a closed connection still waits for its
    client to read the rest: the guard looks at closing connections too."""

    class Writer(connections._StallGuard, asyncio.Protocol):
        send_timeout = 0.3

        def __init__(self, made: asyncio.Future, lost: asyncio.Future) -> None:
            self.made, self.lost = made, lost

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            super().connection_made(transport)
            self.made.set_result(self)

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            self.lost.set_result(exc)

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        made, lost = loop.create_future(), loop.create_future()
        server = await loop.create_server(lambda: Writer(made, lost), "127.0.0.1", 0)
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.setblocking(False)
            await loop.sock_connect(client, server.sockets[0].getsockname())
            writer = await made
            for _ in range(100_000):  # until the sockets' buffers are full and a little waits
                if writer.transport.get_write_buffer_size():
                    break
                writer.transport.write(b"x" * 4096)
                await asyncio.sleep(0)
            assert 0 < writer.transport.get_write_buffer_size() <= 4096  # well below pausing
            writer.transport.close()
            started = loop.time()
            await asyncio.wait_for(lost, 5)
            took = loop.time() - started
        server.close()
        return took

    assert asyncio.run(scenario()) < 3 * 0.3


def test_a_websocket_client_that_stops_reading_is_cut_off(flooding):
    with small_window(flooding) as sock:
        sock.sendall(b"GET /flood/ws?mb=256 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        time.sleep(3 * SEND_TIMEOUT)  # reading nothing, not even the handshake's answer
        data, took = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 101") and len(data) < 64 * MIB
    assert took < 5
    assert "aborted a connection whose client took nothing for 1s" in flooding.output()


def test_json_nested_too_deeply_is_a_400(server):
    answer = httpx.post(server.url + "/hello/nosuch", content=b"[" * 100_000,
                        headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert answer.json() == {"detail": "the request body is nested too deeply"}
    assert "Traceback" not in server.output()


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads the server's limits in /proc")
def test_the_soft_open_file_limit_is_raised_to_the_hard_one(limited):
    limits = Path(f"/proc/{limited.proc.pid}/limits").read_text()
    assert re.search(rf"Max open files\s+{HARD}\s+{HARD}\s", limits)
    assert f"open files: at most {HARD}" in limited.output()


def test_connections_past_the_open_file_limit_are_closed_without_a_flood_of_tracebacks(limited):
    socks = [connect(limited) for _ in range(HARD + 44)]
    try:
        for sock in socks:
            sock.setblocking(False)
        closed: set[socket.socket] = set()
        deadline = time.monotonic() + 10
        while len(closed) < len(socks) - CAP and time.monotonic() < deadline:
            time.sleep(0.1)
            for sock in set(socks) - closed:
                try:
                    if sock.recv(1) == b"":
                        closed.add(sock)
                except BlockingIOError:
                    pass
        assert len(socks) - CAP <= len(closed) < len(socks)
    finally:
        for sock in socks:
            sock.close()
    assert httpx.get(limited.url + "/-/ready", timeout=5).status_code == 200
    output = limited.output()
    assert "Traceback" not in output
    assert output.count(" WARNING ") <= 2


def test_a_failing_accept_is_logged_once_in_a_while_without_its_traceback(monkeypatch, caplog):
    monkeypatch.setattr(connections, "_warn_accept", connections._Every(connections.WARN_EVERY))
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(connections.quiet_accept_failures)
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(1000):  # what asyncio reports in well under a second when out of descriptors
                loop.call_exception_handler({"message": connections.ACCEPT_FAILED,
                                             "exception": OSError(errno.EMFILE, "Too many open files")})
    finally:
        loop.close()
    [record] = caplog.records
    assert record.exc_info is None
    assert record.getMessage().startswith("cannot accept connections: [Errno 24] Too many open files")
