"""The real AIME interfaces in their own environment, and processes running them."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.clientenv import client_python

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CLIENTS = Path(os.environ.get("KERNEL_SHARED_CLIENTS") or REPO.parent / "shared" / "clients")
ENDPOINTS = HERE / "endpoints"
WORKER_KEY = "worker-key-echo"


def aime_python() -> Path:
    """A Python with the AIME worker and client interfaces (their pins agree)."""
    return client_python(
        "aime",
        ["setuptools<70"],
        local=[CLIENTS / "aime-api-worker-interface", CLIENTS / "aime-api-client-interface"],
    )


class Worker:
    """The worker script in its own process group, with a terminal for stdin: the
    interface puts stdin in cbreak mode and fails without one."""

    def __init__(self, python: Path, server: str, log: Path, step_seconds: float = 0.2,
                 key: str = WORKER_KEY, max_batch: int | None = None) -> None:
        self.log = log
        self._primary, secondary = pty.openpty()
        # With `max_batch` the batch worker runs instead, asking for that many jobs at once.
        script, last = ("aime_worker.py", step_seconds) if max_batch is None else ("aime_batch_worker.py", max_batch)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(python), str(HERE / script), server, "echo", key, str(last)],
                stdin=secondary, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        os.close(secondary)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self._primary)


def run_client(python: Path, server: str, key: str, *texts: str, timeout: float = 60) -> dict[str, Any]:
    done = subprocess.run(
        [str(python), str(HERE / "aime_client.py"), server, key, *texts],
        check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
