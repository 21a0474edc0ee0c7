"""Jobs per second through the jobs plugin's queue with no-op workers, and the latency
one job adds over a plain HTTP round trip to the same server.

Usage: python bench/jobs.py [--jobs N] [--seconds S]
Starts `kernel serve --plugins jobs` on a free loopback port; every loop is bounded by a
job count and a time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.conftest import Server

ENDPOINT = """
[ENDPOINT]
name = "noop"
[WORKER]
job_type = "noop"
auth_key = "bench-worker"
[CLIENTS]
authorization_keys = { bench = "bench-client" }
[INPUTS]
n.type = "integer"
n.default = 0
[OUTPUTS]
n = { type = "integer" }
"""
WORKER = {"job_type": "noop", "auth_key": "bench-worker", "request_timeout": 10}


async def worker(client: httpx.AsyncClient, url: str, name: str, stop: asyncio.Event) -> None:
    while not stop.is_set():
        job = (await client.post(f"{url}/worker_job_request", json={**WORKER, "auth": name})).json()
        for data in job.get("job_data", []):
            await client.post(f"{url}/worker_job_result", json={**WORKER, "auth": name, "job_id": data["job_id"],
                                                                  "n": data["n"]})


async def throughput(url: str, workers: int, jobs: int, seconds: float) -> float:
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=workers + 32)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        tasks = [asyncio.ensure_future(worker(client, url, f"w{i}", stop)) for i in range(workers)]
        sent = 0
        deadline = time.monotonic() + seconds

        async def submitter() -> int:
            nonlocal sent
            done = 0
            while sent < jobs and time.monotonic() < deadline:
                sent += 1
                r = await client.post(f"{url}/noop", json={"key": "bench-client", "n": sent})
                done += r.json().get("success") is True
            return done

        started = time.perf_counter()
        done = sum(await asyncio.gather(*[submitter() for _ in range(32)]))
        elapsed = time.perf_counter() - started
        stop.set()
        await asyncio.wait(tasks, timeout=12)
        for task in tasks:
            task.cancel()
    return done / elapsed


async def latency(url: str, rounds: int) -> tuple[float, float]:
    stop = asyncio.Event()
    async with httpx.AsyncClient(timeout=30) as client:
        task = asyncio.ensure_future(worker(client, url, "solo", stop))
        await asyncio.sleep(0.2)
        direct, queued = [], []
        for i in range(rounds):
            t = time.perf_counter()
            await client.post(f"{url}/worker_check_server_status", json=WORKER)
            direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            await client.post(f"{url}/noop", json={"key": "bench-client", "n": i})
            queued.append(time.perf_counter() - t)
        stop.set()
        await asyncio.wait([task], timeout=12)
        task.cancel()
    return statistics.median(direct) * 1000, statistics.median(queued) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400, help="jobs per throughput run")
    parser.add_argument("--seconds", type=float, default=20, help="time limit per run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "endpoints", "noop")
        folder.mkdir(parents=True)
        (folder / "aime_api_endpoint.cfg").write_text(ENDPOINT)
        server = Server(["--plugins", "jobs", "--jobs-endpoints", str(folder.parent), "--log-level", "warning"],
                        Path(tmp, "home")).wait_ready()
        try:
            print("| workers | jobs/s |\n|---|---|")
            for n in (1, 4, 16):
                print(f"| {n} | {asyncio.run(throughput(server.url, n, args.jobs, args.seconds)):.0f} |")
            direct, queued = asyncio.run(latency(server.url, 50))
            print(f"\nmedian HTTP round trip {direct:.2f} ms; one job through the queue {queued:.2f} ms; "
                  f"added {queued - direct:.2f} ms")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
