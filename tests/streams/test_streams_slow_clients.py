"""Large entries and clients that stop reading: what one response or pull message holds is
bounded by bytes (`--streams-max-bytes`), and a pull gives up on a client that takes nothing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import time
from pathlib import Path

import httpx
import websockets

from tests.conftest import Server
from tests.streams.conftest import PASSWORD, USER, Redis, start_streams

MB = 1_000_000


def _token(server: Server) -> str:
    return httpx.post(server.url + "/token", data={"username": USER, "password": PASSWORD}).json()["access_token"]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _stalled(server: Server, request: str) -> socket.socket:
    """A connection that sends `request`, reads the answer's head, then reads no more."""
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # before connect: a small window
    conn.settimeout(30)
    conn.connect(("127.0.0.1", server.port))
    conn.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(1)
        assert chunk, head
        head += chunk
    assert head.split()[1] in (b"200", b"101"), head
    return conn


def _most_rss_mb(pid: int) -> float:
    """The most the server holds over a second and a half, sampled."""
    most = 0.0
    for _ in range(6):
        time.sleep(0.25)
        most = max(most, _rss_mb(pid))
    return most


def test_clients_that_stop_reading_large_entries_hold_about_a_message_each(streams, redis_server: Redis):
    client = redis_server.client()
    blob = os.urandom(8 * MB)
    for _ in range(12):  # 96 MB; a message holds two of them (16 MiB)
        client.xadd("large", {b"d": blob})
    token = _token(streams)
    pid = streams.proc.pid
    before = _rss_mb(pid)
    gets = [_stalled(streams, f"GET /data/large?count=12&last_entry_id=0&token={token} HTTP/1.1\r\nHost: x\r\n\r\n")
            for _ in range(4)]
    key = base64.b64encode(os.urandom(16)).decode()
    pulls = [_stalled(streams, f"GET /data/large/pull?count=12&last_entry_id=0&token={token} HTTP/1.1\r\n"
                               f"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
             for _ in range(4)]
    try:
        for conn in pulls:
            assert conn.recv(1)  # the first message has begun: the pull has read its entries
        held = _most_rss_mb(pid) - before
    finally:
        for conn in gets + pulls:
            conn.close()
    # each held 96 MB up to twice over before (4 responses and 4 pulls: over 1 GB);
    # now a message (16 MB) in the socket's buffer and a read
    assert held < 400, (before, held)

    # all the entries still come, fewer to a message
    r = httpx.get(streams.url + "/data/large", params={"count": 12, "last_entry_id": "0"},
                  headers={"Authorization": f"Bearer {token}"})
    offsets = json.loads(r.headers["entry-offset"])
    assert [start for _, _, start in offsets] == [0, 8 * MB] and len(r.content) == 16 * MB

    async def pull() -> list[int]:
        counts = []
        url = streams.url.replace("http://", "ws://") + "/data/large/pull?count=12&last_entry_id=0&timeout=1000"
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                      max_size=2**24) as ws:
            with contextlib.suppress(websockets.ConnectionClosedOK):
                while True:
                    header = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert len(await asyncio.wait_for(ws.recv(), 10)) <= 2**24
                    counts.append(len(header))
        return counts

    counts = asyncio.run(pull())
    assert sum(counts) == 12 and max(counts) == 2


def test_a_pull_whose_client_takes_nothing_is_closed(tmp_path, redis_server: Redis):
    server = start_streams(tmp_path / "home", redis_server.url, "--streams-dev-login", "--streams-send-timeout-s", "2")
    try:
        client = redis_server.client()
        blob = os.urandom(MB)
        for _ in range(40):
            client.xadd("unread", {b"d": blob})
        token = httpx.post(server.url + "/token", data={"username": "dev", "password": "dev"}).json()["access_token"]

        async def run() -> tuple[int, str, int]:
            url = server.url.replace("http://", "ws://") + "/data/unread/pull?last_entry_id=0&latest=false"
            async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                          max_queue=1, max_size=2**24) as ws:
                for _ in range(300):  # the client reads nothing until the server gives up on it
                    if "took no message" in server.output():
                        break
                    await asyncio.sleep(0.1)
                received = 0
                try:
                    while True:  # what was on its way still comes, then the close
                        await asyncio.wait_for(ws.recv(), 10)
                        received += 1
                except websockets.ConnectionClosed as exc:
                    assert exc.rcvd is not None, exc
                    return exc.rcvd.code, exc.rcvd.reason, received
            raise AssertionError("not closed")

        code, reason, received = asyncio.run(run())
        assert (code, reason) == (1008, "the client took no message for 2 s")
        assert 0 < received < 80  # not all 40 entries (a header and a blob each)
    finally:
        server.stop()


def test_newest_entries_asked_for_are_all_given_once_a_streams_entries_are_small_again(streams, redis_server: Redis):
    client = redis_server.client()
    token = _token(streams)
    for _ in range(3):
        client.xadd("shrinking", {b"d": os.urandom(6 * MB)})

    def newest(count: int) -> list:
        r = httpx.get(streams.url + f"/data/shrinking?count={count}&last_entry_id=*",
                      headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        return json.loads(r.headers["entry-offset"])

    assert len(newest(3)) == 2  # 12 MB of them fit 16 MiB, three do not
    for i in range(10):
        client.xadd("shrinking", {b"d": b"small %d" % i})
    # The last read saw 6 MB entries; these ten are small and fit together.
    assert len(newest(10)) == 10
