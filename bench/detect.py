"""Requests per second and latency of `kernel serve --plugins detect` against pyzm.serve
itself (in its own environment), same model (the YOLOv8-layout 320n) and photo (bus.jpg),
1, 2 and 4 concurrent clients, plus /health latency while detections run. The kernel runs
in several thread settings (`SETTINGS`), so one run compares them on the same machine.

Both servers run on loopback; every level is bounded by a request count and a deadline.
Run from the repository root:

    python -m bench.detect [--requests 30] [--deadline 60] [--settings default,serial]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import Server, free_port
from tests.detect.detect_support import PyzmServe, models_folder
from tests.realmodels import photo

MODEL = "320n"


#: Kernel thread settings compared: onnxruntime's intra-op threads per inference and the
#: kernel's inference workers (inferences at once).
SETTINGS: dict[str, list[str]] = {
    "default": [],
    "serial": ["--infer-workers", "1"],
    "parallel-1t": ["--infer-workers", "2", "--onnxruntime-intra-op-threads", "1"],
}


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
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"kernel settings to run, of {', '.join(SETTINGS)}")
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
            servers = {"pyzm.serve": theirs.wait_ready().url} | {k: s.wait_ready().url for k, s in ours.items()}
            rows = []
            for clients in (1, 2, 4):
                for name, url in servers.items():
                    rows.append((name, clients, load(url, image, clients, args.requests, args.deadline)))
        finally:
            for server in ours.values():
                server.stop()
            theirs.stop()
    print("| server | clients | requests | req/s | p50 ms | p95 ms | /health p50 ms | /health max ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name, clients, r in rows:
        print(f"| {name} | {clients} | {r['n']:.0f} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} "
              f"| {r['health_p50']:.1f} | {r['health_max']:.1f} |")


if __name__ == "__main__":
    main()
