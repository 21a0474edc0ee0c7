"""Cold start: `kernel serve` launched to the first 200 on /-/ready.

Runs the server a bounded number of times on a loopback port with every in-tree feature
plugin (those in entrypoints.toml, or those given with --plugins) and no model loaded,
and prints the median and the spread. Goal: under 1.5 s.

    python bench/startup.py [--runs 5] [--plugins zoo,detect,oip]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as answer:
            return answer.status == 200
    except OSError:
        return False


def one_run(plugins: list[str], home: str, timeout: float = 30) -> float:
    port = free_port()
    url = f"http://127.0.0.1:{port}/-/ready"
    env = {**os.environ, "HOME": home, "XDG_STATE_HOME": os.path.join(home, "state")}
    args = [sys.executable, "-m", "kernel", "serve", "--port", str(port), "--log-level", "warning"]
    if plugins:
        args += ["--plugins", ",".join(plugins)]
    if "oip" in plugins:
        args += ["--oip-grpc-port", str(free_port())]
    started = time.perf_counter()
    # In the temporary home, so plugins' default folders (./zoo) are not made in the checkout.
    server = subprocess.Popen(args, env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while time.perf_counter() - started < timeout:
            if server.poll() is not None:
                raise SystemExit(f"server exited: {server.stderr.read().decode()}")
            if ready(url):
                return time.perf_counter() - started
            time.sleep(0.005)
        raise SystemExit(f"not ready within {timeout}s")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--plugins", help="comma-separated (default: every in-tree feature plugin)")
    args = parser.parse_args()
    if args.plugins is not None:
        plugins = [p for p in args.plugins.split(",") if p]
    else:
        in_tree = tomllib.loads((REPO / "entrypoints.toml").read_text())
        plugins = sorted(in_tree.get("kernel.plugins", {}))
    backends = sorted(ep.name for ep in importlib.metadata.entry_points(group="kernel.backends"))
    with tempfile.TemporaryDirectory() as home:
        one_run(plugins, home)  # warm the file system cache, as a restarted service would be
        times = [one_run(plugins, home) for _ in range(args.runs)]
    print(f"plugins: {', '.join(plugins) or 'none'}; backends installed: {', '.join(backends) or 'none'}")
    print(f"cold serve -> first 200 on /-/ready over {args.runs} runs: "
          f"median {statistics.median(times):.3f} s, min {min(times):.3f} s, max {max(times):.3f} s")


if __name__ == "__main__":
    main()
