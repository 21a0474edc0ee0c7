"""Requests per second and latency of `kernel serve --plugins detect` against pyzm.serve
itself (in its own environment), same model (the YOLOv8-layout 320n) and photo (bus.jpg),
1, 2 and 4 concurrent clients, plus /health latency while detections run.

Both servers run on loopback; every level is bounded by a request count and a deadline.
Run from the repository root:

    python -m bench.detect [--requests 30] [--deadline 60]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import Server, free_port
from tests.detect.detect_support import models_folder, pyzm_python
from tests.realmodels import photo

MODEL = "320n"


def start_pyzm(base: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(pyzm_python()), "-m", "pyzm.serve", "--models", MODEL, "--base-path", str(base),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"pyzm.serve exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("pyzm.serve did not start in 60 s")


def load(url: str, image: bytes, clients: int, requests: int, deadline: float) -> dict[str, float]:
    """`clients` threads posting /infer until `requests` each or the deadline; /health
    sampled alongside."""
    latencies: list[float] = []
    health: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline
    running = threading.Event()
    running.set()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            for _ in range(requests):
                if time.monotonic() > stop_at:
                    return
                started = time.perf_counter()
                r = http.post(url + "/infer", data={"type": "object", "name": MODEL},
                              files={"image": ("bus.jpg", image, "image/jpeg")})
                r.raise_for_status()
                if r.json().get("error"):
                    raise RuntimeError(r.json()["error"])
                with lock:
                    latencies.append(time.perf_counter() - started)

    def prober() -> None:
        with httpx.Client(timeout=60) as http:
            while running.is_set() and time.monotonic() < stop_at:
                started = time.perf_counter()
                http.get(url + "/health")
                health.append(time.perf_counter() - started)
                time.sleep(0.05)

    for _ in range(2):  # warm-up: first load and first run
        httpx.post(url + "/infer", data={"type": "object", "name": MODEL}, files={"image": ("b.jpg", image)}, timeout=60)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    probe = threading.Thread(target=prober)
    started = time.perf_counter()
    probe.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    running.clear()
    probe.join()
    cuts = statistics.quantiles(latencies, n=20)
    return {
        "rps": len(latencies) / elapsed, "p50": statistics.median(latencies) * 1000, "p95": cuts[18] * 1000,
        "health_p50": statistics.median(health) * 1000 if health else float("nan"),
        "health_max": max(health) * 1000 if health else float("nan"), "n": len(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30, help="requests per client per level")
    parser.add_argument("--deadline", type=float, default=60, help="seconds at most per level")
    args = parser.parse_args()
    image = photo("bus.jpg").read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = models_folder(root / "models")
        ours = Server(["--plugins", "detect", "--base-path", str(base), "--models", MODEL], root / "home").wait_ready()
        theirs, their_url = start_pyzm(base, root / "pyzm.log")
        try:
            rows = []
            for clients in (1, 2, 4):
                for name, url in (("pyzm.serve", their_url), ("kernel detect", ours.url)):
                    rows.append((name, clients, load(url, image, clients, args.requests, args.deadline)))
        finally:
            ours.stop()
            theirs.terminate()
            theirs.wait(10)
    print("| server | clients | requests | req/s | p50 ms | p95 ms | /health p50 ms | /health max ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name, clients, r in rows:
        print(f"| {name} | {clients} | {r['n']:.0f} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} "
              f"| {r['health_p50']:.1f} | {r['health_max']:.1f} |")


if __name__ == "__main__":
    main()
