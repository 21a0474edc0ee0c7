"""Requests per second and latency of `kernel serve --plugins detect` against pyzm.serve
itself (in its own environment), same model (the YOLOv8-layout 320n) and photo (bus.jpg),
1, 2 and 4 concurrent clients, plus /health latency while detections run. The kernel runs
in several thread settings (`SETTINGS`), so one run compares them on the same machine.

Both servers run on loopback; every level is bounded by a request count and a deadline.
Run from the repository root:

    python -m bench.detect [--requests 30] [--rounds 5] [--settings default,nospin,parallel-1t]

The servers take turns in short rounds at each concurrency, so other load on a shared
machine skews them alike; read the `x pyzm` ratios rather than absolute rates.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import httpx

from bench import procfs
from tests.conftest import Server, free_port
from tests.detect.detect_support import PyzmServe, models_folder
from tests.realmodels import photo

MODEL = "320n"


#: Kernel thread settings compared: onnxruntime's intra-op threads per inference, the
#: kernel's inference workers (inferences at once), and whether runtime threads spin
#: (within runs, and between them).
SETTINGS: dict[str, list[str]] = {
    "default": [],
    "niced": ["--infer-nice", "10"],
    "nospin": ["--no-onnxruntime-spinning"],
    "spin-between-runs": ["--onnxruntime-spin-between-runs"],
    "serial": ["--infer-workers", "1"],
    "parallel-1t": ["--infer-workers", "2", "--onnxruntime-intra-op-threads", "1"],
    "parallel-1t-nospin": ["--infer-workers", "2", "--onnxruntime-intra-op-threads", "1", "--no-onnxruntime-spinning"],
}


class Sample:
    """What one server did at one concurrency, summed over rounds."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.health: list[float] = []
        self.elapsed = 0.0
        self.cpu = 0.0

    def row(self) -> dict[str, float]:
        cuts = statistics.quantiles(self.latencies, n=20)
        health = sorted(self.health)
        return {
            "n": len(self.latencies), "rps": len(self.latencies) / self.elapsed,
            "cpu_ms": self.cpu / len(self.latencies) * 1000,
            "p50": statistics.median(self.latencies) * 1000, "p95": cuts[18] * 1000,
            "health_p50": statistics.median(health) * 1000 if health else float("nan"),
            "health_p99": health[min(len(health) - 1, int(len(health) * 0.99))] * 1000 if health else float("nan"),
            "health_max": health[-1] * 1000 if health else float("nan"),
        }


def cpu_seconds(pid: int) -> float:
    """The process's CPU time, or NaN once it is gone."""
    try:
        return procfs.cpu_seconds(pid)
    except OSError:
        return float("nan")


#: Probes GET /health every 20 ms until its stdin closes (or the seconds given pass), then
#: prints the latencies as JSON. One connection, kept alive, as a monitor would. It says
#: `ready` after its first answer, so its own start (an interpreter's imports) is over
#: before the clients' clock runs.
PROBE = """
import http.client, json, select, sys, time, urllib.parse
url, budget = urllib.parse.urlsplit(sys.argv[1]), float(sys.argv[2])
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
conn.request("GET", "/health")
conn.getresponse().read()
print("ready", flush=True)
times, deadline = [], time.monotonic() + budget
while time.monotonic() < deadline and not select.select([sys.stdin], [], [], 0.02)[0]:
    started = time.perf_counter()
    conn.request("GET", "/health")
    conn.getresponse().read()
    times.append(time.perf_counter() - started)
print(json.dumps(times))
"""


def load(url: str, image: bytes, clients: int, requests: int, stop_at: float, into: Sample) -> None:
    """`clients` threads posting /infer, `requests` each (or until `stop_at`), with /health
    probed alongside every 20 ms. The multipart body is encoded once, before the clock runs,
    and sent on a kept-alive connection: on two cores, a client library's own work per
    request is taken from the server under test."""
    lock = threading.Lock()
    encoded = httpx.Request("POST", url + "/infer", data={"type": "object", "name": MODEL},
                            files={"image": ("bus.jpg", image, "image/jpeg")})
    body, headers = encoded.read(), {"Content-Type": encoded.headers["Content-Type"]}
    where = urllib.parse.urlsplit(url)

    def client() -> None:
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
        try:
            for _ in range(requests):
                if time.monotonic() > stop_at:
                    return
                started = time.perf_counter()
                conn.request("POST", "/infer", body, headers)
                response = conn.getresponse()
                answer = json.loads(response.read())
                if response.status != 200 or answer.get("error"):
                    raise RuntimeError(f"{response.status}: {answer}")
                with lock:
                    into.latencies.append(time.perf_counter() - started)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    # The prober is a process of its own: a thread here would wait on this process's GIL
    # behind the clients, and its waits would count against the server.
    probe = subprocess.Popen([sys.executable, "-c", PROBE, url, str(max(0.0, stop_at - time.monotonic()))],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if probe.stdout.readline().strip() != "ready":
        raise RuntimeError("the /health prober did not start")
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    into.elapsed += time.perf_counter() - started
    into.health += json.loads(probe.communicate("", timeout=60)[0])  # the line after `ready`


def measure(servers: dict[str, tuple[str, int]], image: bytes, requests: int, rounds: int,
            deadline: float) -> list[tuple[str, int, dict[str, float]]]:
    """Every server at 1, 2 and 4 clients. The servers take turns in `rounds` short rounds,
    so load from other processes on a shared machine falls on all of them alike. Each
    server's CPU time per request is what the machine's load does not change much."""
    for url, _ in servers.values():  # warm-up: first load and first run
        for _ in range(2):
            httpx.post(url + "/infer", data={"type": "object", "name": MODEL}, files={"image": ("b.jpg", image)}, timeout=60)
    rows = []
    per_round = max(1, requests // rounds)
    for clients in (1, 2, 4):
        samples = {name: Sample() for name in servers}
        stop_at = time.monotonic() + deadline
        for _ in range(rounds):
            for name, (url, pid) in servers.items():
                before = cpu_seconds(pid)
                load(url, image, clients, per_round, stop_at, samples[name])
                samples[name].cpu += cpu_seconds(pid) - before
        rows += [(name, clients, samples[name].row()) for name in servers]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30, help="requests per client per level and server")
    parser.add_argument("--rounds", type=int, default=5, help="turns the servers take at each level")
    parser.add_argument("--deadline", type=float, default=180, help="seconds at most per level (all servers)")
    parser.add_argument("--settings", default="default,nospin,parallel-1t,parallel-1t-nospin",
                        help=f"kernel settings to run, of {', '.join(SETTINGS)}")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.settings.split(",") if name.strip()]
    unknown = set(chosen) - set(SETTINGS)
    if unknown:
        parser.error(f"unknown settings: {', '.join(sorted(unknown))}")
    image = photo("bus.jpg").read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = models_folder(root / "models")
        theirs = PyzmServe(["--models", MODEL, "--base-path", str(base)], root / "pyzm.log", free_port())
        ours = {
            f"kernel detect ({name})": Server(["--plugins", "detect", "--base-path", str(base), "--models", MODEL,
                                               *SETTINGS[name]], root / name)
            for name in chosen
        }
        try:
            servers = {"pyzm.serve": (theirs.wait_ready().url, theirs.proc.pid)}
            servers |= {k: (s.wait_ready().url, s.proc.pid) for k, s in ours.items()}
            rows = measure(servers, image, args.requests, args.rounds, args.deadline)
        finally:
            for server in ours.values():
                server.stop()
            theirs.stop()
    base_rps = {clients: r["rps"] for name, clients, r in rows if name == "pyzm.serve"}
    print("| server | clients | requests | req/s | x pyzm | p50 ms | p95 ms | CPU ms/req "
          "| /health p50 ms | /health p99 ms | /health max ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, clients, r in rows:
        print(f"| {name} | {clients} | {r['n']:.0f} | {r['rps']:.1f} | {r['rps'] / base_rps[clients]:.2f} "
              f"| {r['p50']:.0f} | {r['p95']:.0f} | {r['cpu_ms']:.0f} | {r['health_p50']:.1f} | {r['health_p99']:.1f} | {r['health_max']:.1f} |")


if __name__ == "__main__":
    main()
