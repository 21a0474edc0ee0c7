"""The ASGI zero-copy send extension the kernel adds to its server: files go out with
sendfile, whole or in part, keep-alive goes on after them, a file not in memory is read in
off the event loop, a client leaving mid-file costs the server nothing, and one that stops
reading is cut off after `--send-timeout` (a slow one is not)."""

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time

import httpx
import pytest

from kernel import zerocopy
from tests.kernel.slow_clients import MIB, read_paced, read_until_closed, small_window

pytestmark = pytest.mark.usefixtures("test_plugins")

SIZE = 8 * 1024 * 1024  # larger than a socket's buffer, so sendfile has to wait and resume


@pytest.fixture
def blob(tmp_path):
    data = os.urandom(SIZE)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    return path, data


def evict(path):
    """Drop the file's pages from the page cache, or skip where that cannot be done."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if zerocopy._in_memory(fd, 0, os.fstat(fd).st_size):
            pytest.skip("this file system keeps the file in memory (or cannot tell)")
    finally:
        os.close(fd)


@pytest.fixture
def server(serve, blob):
    return serve("--plugins", "sendfile", KERNEL_TEST_SENDFILE=str(blob[0]))


def test_a_file_is_sent_whole_and_in_part_on_one_kept_alive_connection(server, blob):
    _, data = blob
    with httpx.Client(base_url=server.url) as client:
        empty = client.get("/sendfile", params={"offset": 5, "count": 0})
        whole = client.get("/sendfile")
        part = client.get("/sendfile", params={"offset": 1000, "count": 123_457})
        tail = client.get("/sendfile", params={"offset": SIZE - 10})
    assert whole.headers["x-zerocopy"] == "offered"
    assert whole.content == data
    assert part.content == data[1000:1000 + 123_457]
    assert tail.content == data[-10:]
    assert empty.status_code == 200 and empty.content == b""
    assert "Traceback" not in server.output()  # written before a later request is served


def test_without_a_content_length_the_file_goes_out_chunked(server, blob):
    answer = httpx.get(server.url + "/sendfile", params={"offset": 5, "chunked": "true"})
    assert answer.headers["transfer-encoding"] == "chunked"
    assert answer.content == blob[1][5:]


def test_a_client_leaving_mid_file_leaves_the_server_serving(server, blob):
    for _ in range(3):
        with socket.socket() as sock:
            # A small receive window holds the server mid-file until the reset below.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"GET /sendfile HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert httpx.get(server.url + "/sendfile").content == blob[1]
    assert "Traceback" not in server.output() and " ERROR " not in server.output()


def test_a_window_not_in_memory_is_read_in(blob):
    path, _ = blob
    evict(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        start = SIZE // 3
        assert not zerocopy._in_memory(fd, start, SIZE - start)
        zerocopy._read_in(os.dup(fd), start, SIZE - start)  # it closes the descriptor it is given
        assert zerocopy._in_memory(fd, start, SIZE - start)
    finally:
        os.close(fd)


def test_a_file_not_in_memory_is_sent_whole_and_across_windows(serve, tmp_path):
    data = os.urandom(2 * zerocopy.WINDOW + 12_345)
    path = tmp_path / "cold.bin"
    path.write_bytes(data)
    server = serve("--plugins", "sendfile", KERNEL_TEST_SENDFILE=str(path))
    with httpx.Client(base_url=server.url) as client:
        evict(path)
        whole = client.get("/sendfile")
        evict(path)
        span = client.get("/sendfile", params={"offset": zerocopy.WINDOW - 7, "count": zerocopy.WINDOW + 100})
    assert whole.content == data
    assert span.content == data[zerocopy.WINDOW - 7:2 * zerocopy.WINDOW + 93]


def test_a_slow_reader_gets_every_byte_across_windows(serve, tmp_path):
    # The reader keeps the socket full longer than a sending thread waits, so the event
    # loop takes over the window, and the next window starts in a thread again.
    data = os.urandom(zerocopy.WINDOW + 4_000_000)
    path = tmp_path / "slow.bin"
    path.write_bytes(data)
    server = serve("--plugins", "sendfile", KERNEL_TEST_SENDFILE=str(path))
    # more than the server's socket buffer holds (at most 4 MiB by default), across a window's end
    start, count = zerocopy.WINDOW - 3_000_000, 6_000_000
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(f"GET /sendfile?offset={start}&count={count} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = b""
        for pause in [3 * zerocopy.PATIENCE] * 3 + [0] * count:  # bounded: at most one recv per byte
            time.sleep(pause)
            chunk = sock.recv(65536)
            received += chunk
            if not chunk or len(received.partition(b"\r\n\r\n")[2]) >= count:
                break
    body = received.partition(b"\r\n\r\n")[2]
    assert body == data[start:start + count]
    assert "Traceback" not in server.output()


def served_file(serve, tmp_path, size: int, *args: str) -> tuple:
    """A server of a file of `size` random bytes (`kernel serve` given `args` too), and the bytes."""
    data = os.urandom(size)
    path = tmp_path / "served.bin"
    path.write_bytes(data)
    return serve("--plugins", "sendfile", *args, KERNEL_TEST_SENDFILE=str(path)), data


@pytest.fixture
def large(serve, tmp_path):
    """A server of a file of more than one window, and the file's bytes."""
    return served_file(serve, tmp_path, zerocopy.WINDOW + 2_000_000)


def read_all(sock: socket.socket, limit: int) -> bytes:
    received = b""
    while len(received) < limit:  # bounded: the server closes, or the timeout ends it
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        received += chunk
    return received


def test_a_client_that_half_closes_after_its_request_gets_the_whole_file(large):
    server, data = large
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET /sendfile HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)  # done sending, still reading
        body = read_all(sock, len(data) + 1000).partition(b"\r\n\r\n")[2]
    assert body == data
    assert "Traceback" not in server.output()


def test_a_request_sent_during_a_download_is_answered_after_the_file(large):
    server, data = large
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET /sendfile HTTP/1.1\r\nHost: x\r\n\r\n")
        received = sock.recv(65536)
        sock.sendall(b"BAD\x01REQUEST\r\n\r\n")  # pipelined, and refused by uvicorn
        received += read_all(sock, len(data) + 1000)
    body = received.partition(b"\r\n\r\n")[2]
    assert body[:len(data)] == data
    assert body[len(data):].startswith(b"HTTP/1.1 400")


def test_a_client_that_stops_reading_a_file_is_cut_off(serve, tmp_path):
    server, data = served_file(serve, tmp_path, 64 * MIB, "--send-timeout", "1")
    with small_window(server, rcvbuf=8192) as sock:
        sock.sendall(b"GET /sendfile HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(3)  # reading nothing
        received, took = read_until_closed(sock)
    assert len(received) < len(data) and took < 5
    assert "reset a connection whose client took none of a file for 1s" in server.output()
    assert "Traceback" not in server.output()
    assert httpx.get(server.url + "/sendfile?count=1000").content == data[:1000]  # and the server serves on


def test_a_slow_reader_of_a_file_is_not_cut_off(serve, tmp_path):
    server, data = served_file(serve, tmp_path, 24 * MIB, "--send-timeout", "1")
    with small_window(server, rcvbuf=8192) as sock:
        sock.sendall(b"GET /sendfile HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received, took = read_paced(sock)
    assert took > 2
    assert received.partition(b"\r\n\r\n")[2] == data
    assert "reset a connection" not in server.output()


async def _stalled_transport(loop):
    """A server-side transport on loopback whose client, with a small window, reads nothing."""
    made = loop.create_future()

    class Quiet(asyncio.Protocol):
        def connection_made(self, transport):
            made.set_result(transport)

    server = await loop.create_server(Quiet, "127.0.0.1", 0)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    client.setblocking(False)
    await loop.sock_connect(client, server.sockets[0].getsockname())
    return server, client, await made


def test_a_stalled_client_reset_while_the_file_waits_behind_other_bytes_logs_no_error(tmp_path, caplog):
    path = tmp_path / "behind.bin"
    path.write_bytes(os.urandom(4 * 1024 * 1024))

    async def scenario(file):
        loop = asyncio.get_running_loop()
        server, client, transport = await _stalled_transport(loop)
        transport.write(b"x" * (8 * 1024 * 1024))  # an earlier answer the client never read
        await asyncio.sleep(0.1)
        with pytest.raises(ConnectionAbortedError):
            await zerocopy._sendfile(transport, file, 0, None, send_timeout=0.3)
        await asyncio.sleep(0.1)  # the connection's end runs
        client.close()
        server.close()

    with caplog.at_level(logging.ERROR, logger="asyncio"), open(path, "rb") as file:
        asyncio.run(scenario(file))
    assert not [r for r in caplog.records if r.name == "asyncio"]


def test_a_cancelled_file_send_stops_before_its_caller_goes_on(tmp_path):
    path = tmp_path / "cancelled.bin"
    path.write_bytes(os.urandom(16 * 1024 * 1024))

    async def scenario(file):
        loop = asyncio.get_running_loop()
        server, client, transport = await _stalled_transport(loop)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):  # the caller gives up on a client that reads nothing
                await zerocopy._sendfile(transport, file, 0, None, send_timeout=60)
        # The send is over: the transport takes writes again (a send still under way would
        # refuse them), so nothing goes on sending from the file's descriptor once it closes.
        transport.write(b"after")
        transport.abort()
        client.close()
        server.close()

    with open(path, "rb") as file:
        asyncio.run(scenario(file))
