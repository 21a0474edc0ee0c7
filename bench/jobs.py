"""Jobs per second through the jobs plugin's queue with no-op workers (1, 4, 16), and the
latency one job adds over a plain HTTP round trip to the same server; with
`--aime-server DIR` the same figures, measured in the same run, for the original AIME API
server from a checkout of it.

Usage: python bench/jobs.py [--jobs N] [--seconds S] [--aime-server DIR]
Every server listens on a free loopback port; every loop is bounded by a job count and a
time limit. The original runs from a temporary copy of DIR (it writes logs beside its
code) in its own virtual environment, built from its requirements.txt into the cache.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.clientenv import client_python
from tests.conftest import Server, free_port

# One endpoint file, read by both servers.
ENDPOINT = """
[ENDPOINT]
name = "noop"
methods = ["GET", "POST"]
[WORKER]
job_type = "noop"
auth_key = "bench-worker"
request_timeout = 10
[CLIENTS]
authorization_keys = { bench = "bench-client" }
[INPUTS]
n.type = "integer"
n.default = 0
[OUTPUTS]
n = { type = "integer" }
"""
# The original's own server settings, pointed at loopback, without its web pages or OpenAI routes.
AIME_CONFIG = """
[SERVER]
host = "127.0.0.1"
port = {port}
endpoint_configs = "{endpoints}"
[SANIC]
access_log = false
keep_alive = true
keep_alive_timeout = 30
[CLIENTS]
default_authorization_keys = {{}}
default_provide_worker_meta_data = false
default_client_request_limit = 0
[WORKERS]
default_auth_key = "bench-worker"
default_request_timeout = 10
[ENDPOINTS]
default_max_queue_length = 1000
default_max_time_in_queue = 3600
default_job_inactivity_timeout = 360
default_result_lifetime = 900
[OPENAI]
enable_v1_api = false
"""
# What the AIME worker interface sends; `version` makes the original log the worker in.
WORKER = {"job_type": "noop", "auth_key": "bench-worker", "request_timeout": 10, "version": "bench",
          "max_job_batch": 1}


async def worker(client: httpx.AsyncClient, url: str, name: str) -> None:
    """A no-op worker: returns each job's input as its output, until cancelled."""
    ask = {**WORKER, "auth": name}
    while True:
        job = (await client.post(f"{url}/worker_job_request", json=ask)).json()
        for data in job.get("job_data", []):
            await client.post(f"{url}/worker_job_result", json={**ask, "job_id": data["job_id"], "n": data["n"]})


async def throughput(url: str, workers: int, jobs: int, seconds: float) -> float:
    """Finished jobs per second, 32 clients each waiting for its job's result."""
    limits = httpx.Limits(max_connections=workers + 32)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        tasks = [asyncio.ensure_future(worker(client, url, f"w{i}")) for i in range(workers)]
        sent = 0
        deadline = time.monotonic() + seconds

        async def submitter() -> int:
            nonlocal sent
            done = 0
            while sent < jobs and time.monotonic() < deadline:
                sent += 1
                n = sent
                r = await client.post(f"{url}/noop", json={"key": "bench-client", "n": n})
                done += r.status_code == 200 and r.json().get("n") == n
            return done

        started = time.perf_counter()
        done = sum(await asyncio.gather(*[submitter() for _ in range(32)]))
        elapsed = time.perf_counter() - started
        for task in tasks:  # their long polls end with the connections
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return done / elapsed


async def latency(url: str, rounds: int) -> tuple[float, float]:
    """Median ms of a trivial request to the server, and of one job through its queue."""
    async with httpx.AsyncClient(timeout=30) as client:
        task = asyncio.ensure_future(worker(client, url, "solo"))
        await asyncio.sleep(0.2)
        direct, queued = [], []
        for i in range(rounds):
            t = time.perf_counter()
            await client.post(f"{url}/worker_check_server_status", json={**WORKER, "auth": "probe"})
            direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            await client.post(f"{url}/noop", json={"key": "bench-client", "n": i})
            queued.append(time.perf_counter() - t)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return statistics.median(direct) * 1000, statistics.median(queued) * 1000


@contextmanager
def aime_server(checkout: Path, endpoints: Path, work: Path) -> Iterator[str]:
    """The original server on a free loopback port, from a copy of `checkout`."""
    requirements = [line.split("#")[0].strip() for line in (checkout / "requirements.txt").read_text().splitlines()]
    python = client_python("aime-api-server", [r for r in requirements if r])
    copy = work / "aime-api-server"
    shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git", "docs", "frontend"))
    port = free_port()
    config = work / "aime_api_server.cfg"
    config.write_text(AIME_CONFIG.format(port=port, endpoints=endpoints))
    log = work / "aime-api-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(python), "run_api_server.py", "-s", str(config), "--hide_logging"],
                                cwd=copy, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the AIME API server did not start:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.post(f"{url}/worker_check_server_status", json=WORKER, timeout=2).json().get(
                        "job_type_present"):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.3)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def kernel_server(endpoints: Path, work: Path) -> Iterator[str]:
    server = Server(["--plugins", "jobs", "--jobs-endpoints", str(endpoints), "--log-level", "warning"],
                    work / "home").wait_ready()
    try:
        yield server.url
    finally:
        server.stop()


def report(servers: dict[str, str], args: argparse.Namespace) -> None:
    """One table; the servers take turns at each step, so drifting load hits them alike."""
    names = list(servers)
    print("| workers | " + " | ".join(f"{name} jobs/s" for name in names) + " |")
    print("|---|" + "---|" * len(names))
    for n in (1, 4, 16):
        rates = [asyncio.run(throughput(servers[name], n, args.jobs, args.seconds)) for name in names]
        print(f"| {n} | " + " | ".join(f"{rate:.0f}" for rate in rates) + " |", flush=True)
    print("\n| server | trivial request ms | one job through the queue ms | added ms |\n|---|---|---|---|")
    for name in names:
        direct, queued = asyncio.run(latency(servers[name], args.rounds))
        print(f"| {name} | {direct:.2f} | {queued:.2f} | {queued - direct:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400, help="jobs per throughput run")
    parser.add_argument("--seconds", type=float, default=20, help="time limit per run")
    parser.add_argument("--rounds", type=int, default=50, help="sequential jobs for the latency")
    parser.add_argument("--aime-server", type=Path, metavar="DIR",
                        help="a checkout of the original AIME API server to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        folder = work / "endpoints" / "noop"
        folder.mkdir(parents=True)
        (folder / "aime_api_endpoint.cfg").write_text(ENDPOINT)
        servers = {"kernel jobs": stack.enter_context(kernel_server(folder.parent, work))}
        if args.aime_server is None:
            print("comparison with the original AIME API server skipped: pass --aime-server DIR (a checkout of it)\n")
        else:
            servers["AIME API server"] = stack.enter_context(aime_server(args.aime_server.resolve(), folder.parent, work))
        report(servers, args)


if __name__ == "__main__":
    main()
