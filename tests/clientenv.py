"""Virtual environments for the real clients the plugins must serve.

The real clients pin versions that clash with each other and with the project (degirum
wants the GUI opencv-python, the AIME client pins requests and aiohttp, tritonclient wants
protobuf<7), so each gets its own environment, built once and reused while its requirement
list is unchanged, and tests run it as a subprocess against a server on loopback.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def venvs_dir() -> Path:
    return Path(os.environ.get("KERNEL_TEST_VENVS") or REPO / ".cache" / "client-venvs")


def client_python(name: str, requirements: Sequence[str], local: Sequence[Path] = ()) -> Path:
    """The python of an environment named `name` holding `requirements` (pip specifiers)
    and `local` package folders, which are copied to a temporary place first: pip writes
    build files into the folder it installs from, and those folders may be read-only.
    Built once per distinct requirement list; concurrent callers wait for one build."""
    digest = hashlib.sha256("\n".join([*requirements, *map(str, local)]).encode()).hexdigest()[:12]
    root = venvs_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{name}-{digest}"
    python = target / "bin" / "python"
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").is_file():
            return python
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
        build = target / "src"
        sources = []
        for folder in local:
            copy = build / Path(folder).name
            shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
            sources.append(str(copy))
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *requirements, *sources],
            capture_output=True, text=True, check=False,  # the caller reports the failure
        )
        if done.returncode != 0:
            raise RuntimeError(f"installing {name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        (target / ".complete").write_text("\n".join(requirements))
    return python
