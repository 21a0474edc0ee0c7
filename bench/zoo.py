"""The zoo plugin against the original `dg_zoo_server` 0.3.0 and `python -m http.server`,
serving the same files in one run: listing latency of a zoo of 500 archives, download
throughput of a 100 MB archive with 1 and 8 clients (median MB/s, and the server's CPU
seconds per GB sent; the servers take turns, round by round), upload time of that archive,
the server's peak memory (VmHWM) after the upload, and its memory while 32 downloads stall
(clients that stop reading). http.server also runs a second time sending files with
sendfile(2), as the zoo does: on loopback the receiving client then copies from the page
cache rather than from data the sender just copied, so this row shows what zero-copy
alone does to the rate here. Every loop is bounded in count and time; servers listen on
loopback only. Run from the repository root:

    python -m bench.zoo [--models 500] [--size-mb 100] [--listings 200]
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.procfs import cpu_seconds, memory_mb
from tests.clientenv import client_python
from tests.conftest import Server, free_port
from tests.zoo.zoo_archives import params, write_archive

TOKEN = "dg_bench_admin_token"
STALLED = 32
ORIGINAL = ["dg_zoo_server==0.3.0"]
RUN_ORIGINAL = (
    "import sys, uvicorn, dg_zoo_server; "
    "uvicorn.run(dg_zoo_server.app, host='127.0.0.1', port=int(sys.argv[2]), log_level='warning')"
)
#: http.server sending files with sendfile(2) instead of copying them through Python: what
#: zero-copy alone does on this machine's loopback, beside the same server copying.
RUN_SENDFILE = """
import functools, http.server, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    def copyfile(self, source, outputfile):
        self.connection.sendfile(source)
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])),
                                         functools.partial(Handler, directory=sys.argv[2]))
server.serve_forever()
"""
#: Servers of plain files (no zoo routes, no listing or upload).
FILE_SERVERS = ("http.server", "http.server + sendfile")


class Proc:
    """A server subprocess on loopback: its port and pid."""

    def __init__(self, name: str, port: int, proc: subprocess.Popen | None = None, server: Server | None = None):
        self.name, self.proc, self.server = name, proc, server
        self.port = server.port if server else port
        self.pid = (server.proc if server else proc).pid  # type: ignore[union-attr]

    def wait(self, path: str, timeout: float = 60) -> Proc:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (self.proc is None or self.proc.poll() is None):
            try:
                if request(self.port, "GET", path)[0] < 500:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start")

    def stop(self) -> None:
        if self.server:
            self.server.stop()
        elif self.proc:
            self.proc.terminate()
            self.proc.wait(10)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        return memory_mb(self.pid, "VmRSS")

    def peak_rss_mb(self) -> float:
        return memory_mb(self.pid, "VmHWM")


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, sink: memoryview | None = None) -> tuple[int, int]:
    """One request on a fresh connection; returns (status, body bytes read)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body, headers={"token": TOKEN, **(headers or {})})
        answer = conn.getresponse()
        total = 0
        if sink is None:
            total = len(answer.read())
        else:
            while n := answer.readinto(sink):
                total += n
        return answer.status, total
    finally:
        conn.close()


def build_zoo(root: Path, models: int, size_mb: int) -> tuple[Path, bytes]:
    binary = os.urandom(4096)
    for i in range(models):
        write_archive(root / "bench" / "list", f"model_{i:04d}", binary)
    big = os.urandom(size_mb * 1024 * 1024)
    meta = params("big", big, ".bin")
    folder = root / "bench" / "big"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "big.zip", "w", zipfile.ZIP_STORED) as z:
        z.writestr("big/big.json", json.dumps(meta))
        z.writestr("big/big.bin", big)
    (root / "bench" / "upload").mkdir(parents=True)
    (root / "tokens.json").write_text(json.dumps({TOKEN: {"is_admin": True, "zoos": []}}))
    return folder / "big.zip", big


def listing(p: Proc, count: int, budget_s: float = 30) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=30)
    times: list[float] = []
    deadline = time.monotonic() + budget_s
    for _ in range(count):
        started = time.perf_counter()
        conn.request("GET", "/zoo/v1/public/models/bench/list", headers={"token": TOKEN})
        answer = conn.getresponse()
        assert answer.status == 200 and len(json.loads(answer.read())) > 0
        times.append(time.perf_counter() - started)
        if time.monotonic() > deadline:
            break
    conn.close()
    return times


def download_rates(servers: dict[str, tuple[Proc, str]], size: int, clients: int,
                   rounds: int) -> dict[str, tuple[float, float]]:
    """Per server: aggregate MB/s of `clients` concurrent downloads (median of `rounds`),
    and its CPU seconds per GB sent (what zero-copy saves, steadier than loopback rates).
    The servers take turns round by round, so a busy moment of the machine (loopback rates
    swing by 2x here) falls on all of them alike."""
    def one(server: tuple[Proc, str], _: int) -> int:
        p, path = server
        status, n = request(p.port, "GET", path, sink=memoryview(bytearray(4 * 1024 * 1024)))
        assert status == 200 and n == size, (status, n)
        return n

    rates: dict[str, list[float]] = {name: [] for name in servers}
    cpu = dict.fromkeys(servers, 0.0)
    sent = dict.fromkeys(servers, 0)
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(rounds):
            for name, (p, path) in servers.items():
                cpu_before = p.cpu_seconds()
                started = time.perf_counter()
                total = sum(pool.map(functools.partial(one, (p, path)), range(clients)))
                rates[name].append(total / 1e6 / (time.perf_counter() - started))
                cpu[name] += p.cpu_seconds() - cpu_before
                sent[name] += total
    return {name: (statistics.median(rates[name]), cpu[name] / (sent[name] / 1e9)) for name in servers}


def stalled_rss_mb(p: Proc, path: str, clients: int = STALLED) -> float:
    """The server's memory while `clients` downloads stall: each client reads its first
    64 KiB and then nothing, as a slow or stuck client would. What a server holds per
    stalled download is what many slow clients can make it hold."""
    sockets = []
    try:
        for _ in range(clients):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.settimeout(30)
            sock.connect(("127.0.0.1", p.port))
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\ntoken: {TOKEN}\r\n\r\n".encode())
            sock.recv(64 * 1024)
            sockets.append(sock)
        time.sleep(2)  # let the server fill whatever it buffers
        return p.rss_mb()
    finally:
        for sock in sockets:
            sock.close()


def upload_seconds(p: Proc, archive: bytes) -> float:
    boundary = "benchboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.zip\"\r\n"
            "Content-Type: application/zip\r\n\r\n").encode() + archive + f"\r\n--{boundary}--\r\n".encode()
    started = time.perf_counter()
    status, _ = request(p.port, "POST", "/zoo/v1/public/models/bench/upload?allow_overwrite=true", body=body,
                        headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert status == 201, status
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=500)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--listings", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "zoo"
        big_path, _ = build_zoo(root, args.models, args.size_mb)
        archive, size = big_path.read_bytes(), big_path.stat().st_size
        original_python = client_python("dg-zoo-server", ORIGINAL)
        starts: dict[str, Callable[[], Proc]] = {
            "kernel zoo": lambda: Proc("kernel zoo", 0, server=Server(
                ["--plugins", "zoo", "--zoo", str(root), "--log-level", "warning"], Path(tmp) / "home",
            ).wait_ready()),
            "dg_zoo_server 0.3.0": lambda: _spawn("dg_zoo_server 0.3.0", lambda port: [
                str(original_python), "-c", RUN_ORIGINAL, "--port", str(port), "--zoo", str(root)], root),
            "http.server": lambda: _spawn("http.server", lambda port: [
                sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)], root),
            "http.server + sendfile": lambda: _spawn("http.server + sendfile", lambda port: [
                sys.executable, "-c", RUN_SENDFILE, str(port), str(root)], root),
        }
        running: dict[str, Proc] = {}
        try:
            for name, start in starts.items():
                running[name] = start()
            rows = {}
            for name, p in running.items():
                files = name in FILE_SERVERS
                lat = [] if files else listing(p, args.listings)
                up = float("nan") if files else upload_seconds(p, archive)
                rows[name] = [lat, up, p.peak_rss_mb()]
            downloads = {name: (p, "/bench/big/big.zip" if name in FILE_SERVERS else
                                "/zoo/v1/public/models/bench/big/big") for name, p in running.items()}
            one = download_rates(downloads, size, 1, rounds=7)
            eight = download_rates(downloads, size, 8, rounds=3)
            for name, (p, path) in downloads.items():
                rows[name] += [one[name], eight[name], stalled_rss_mb(p, path)]
        finally:
            for p in running.values():
                p.stop()

    print(f"\n{args.models} archives listed {args.listings} times; a {size / 1e6:.0f} MB archive\n")
    print("| server | list p50 ms | list p95 ms | download 1 client MB/s (CPU s/GB) "
          f"| download 8 clients MB/s (CPU s/GB) | upload s | peak RSS after upload MB "
          f"| RSS with {STALLED} stalled downloads MB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (lat, up, peak, one, eight, stalled) in rows.items():
        p50 = f"{statistics.median(lat) * 1000:.2f}" if lat else "-"
        p95 = f"{statistics.quantiles(lat, n=20)[-1] * 1000:.2f}" if len(lat) > 1 else "-"
        upload = "-" if math.isnan(up) else f"{up:.2f}"
        print(f"| {name} | {p50} | {p95} | {one[0]:.0f} ({one[1]:.2f}) | {eight[0]:.0f} ({eight[1]:.2f}) "
              f"| {upload} | {peak:.0f} | {stalled:.0f} |")


def _spawn(name: str, command_for: Callable[[int], list[str]], root: Path) -> Proc:
    port = free_port()
    command = command_for(port)
    with open(root.parent / f"{port}.log", "wb") as log:
        proc = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=log,
                                stdin=subprocess.DEVNULL)
    try:
        return Proc(name, port, proc=proc).wait("/")
    except RuntimeError:
        proc.kill()
        raise RuntimeError(f"{name} did not start: {(root.parent / f'{port}.log').read_text()[-2000:]}") from None


if __name__ == "__main__":
    main()
