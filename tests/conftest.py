"""Fixtures shared by every test: kernels built in-process, and real servers on loopback."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
KERNEL = [sys.executable, "-m", "kernel"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


#: Where the `test_plugins` fixture installed the test plugins, once it has.
_TEST_SITE: list[str] = []


@pytest.fixture(scope="session")
def test_plugins(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Install the example plugin and the misbehaving test plugins, as a user would, but in
    a folder of their own put on the path of this process and of the servers started after
    (`kernel_env`): in the project's environment they would stay behind, and every later
    `kernel serve` there would list the broken ones as problems.

    A regular (not editable) install: an editable one is importable only by interpreters
    started after it, and in-process tests need them in this one too."""
    site = tmp_path_factory.mktemp("test-plugins")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site),
         str(REPO / "examples" / "kernel-hello"), str(REPO / "tests" / "testplugins")],
        check=True, capture_output=True,
    )
    sys.path.insert(0, str(site))
    _TEST_SITE.append(str(site))
    importlib.invalidate_caches()
    # stevedore keeps the entry points it saw in this process (per group, and per sys.path
    # underneath); let it look again.
    from stevedore import ExtensionManager, _cache

    ExtensionManager.ENTRY_POINT_CACHE.clear()
    _cache._c._internal.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kernel_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNEL_")}
    env.update(HOME=str(home), XDG_STATE_HOME=str(home / "state"), **extra)
    if _TEST_SITE:
        env["PYTHONPATH"] = os.pathsep.join([*_TEST_SITE, *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_kernel(args: Sequence[str], home: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the `kernel` command to completion."""
    return subprocess.run(
        [*KERNEL, *args], capture_output=True, text=True, timeout=timeout,
        env=kernel_env(home, **env), stdin=subprocess.DEVNULL, check=False,  # callers check the status
    )


class Server:
    """`kernel serve` as a subprocess on a free loopback port."""

    def __init__(self, args: Sequence[str], home: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / f"server-{self.port}.log"
        home.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*KERNEL, "serve", "--port", str(self.port), *args],
                stdout=out, stderr=subprocess.STDOUT, env=kernel_env(home, **env),
                stdin=subprocess.DEVNULL,
            )

    def wait_ready(self, timeout: float = 30) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"server not ready in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    """Start servers with `serve(args...)`; they are stopped after the test."""
    servers: list[Server] = []

    def start(*args: str, ready: bool = True, **env: str) -> Server:
        server = Server(args, tmp_path / "home", **env)
        servers.append(server)
        return server.wait_ready() if ready else server

    yield start
    for server in servers:
        server.stop()
