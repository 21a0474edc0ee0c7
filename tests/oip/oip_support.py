"""Shared by the OIP tests: a server on loopback with the test repository, and tritonclient."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.clientenv import client_python
from tests.conftest import Server, free_port

TRITONCLIENT = ["tritonclient[http,grpc]==2.73.0"]
CLIENTS = Path(__file__).resolve().parent / "clients"


def start_server(home: Path, models: Path, *args: str, **env: str) -> tuple[Server, int]:
    """`kernel serve --plugins oip` with the repository `models`; the server and its gRPC port."""
    grpc_port = free_port()
    server = Server(
        ["--plugins", "oip", "--model-dir", str(models), "--oip-grpc-port", str(grpc_port),
         "--infer-workers", "2", *args],
        home, **env,
    )
    return server.wait_ready(), grpc_port


def run_client(script: str, *args: str, timeout: float = 120) -> dict:
    """Run a script from clients/ in tritonclient's environment; its JSON output."""
    python = client_python("tritonclient", TRITONCLIENT)
    done = subprocess.run(
        [str(python), str(CLIENTS / script), *args], capture_output=True, text=True, timeout=timeout, check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return json.loads(done.stdout)
