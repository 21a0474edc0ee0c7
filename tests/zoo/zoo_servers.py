"""Starting `kernel serve --plugins zoo` for the zoo tests, and talking to it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import Server

SECRET = "zoo-tests-" + "s" * 40


def start_zoo(home: Path, zoo: Path, *args: str) -> Server:
    return Server(
        ["--plugins", "zoo", "--zoo", str(zoo), "--token-secret", SECRET, *args], home,
    ).wait_ready()


def first_admin(server: Server) -> str:
    answer = httpx.post(server.url + "/zoo/v1/public/tokens", params={"is_admin": "true"})
    assert answer.status_code == 200, answer.text
    return answer.json()["token"]


@contextmanager
def serving_zoo(home: Path, zoo: Path, *args: str) -> Iterator[tuple[Server, str]]:
    """A zoo server and its first admin token; the server is stopped after, and its log
    must hold no traceback."""
    server = start_zoo(home, zoo, *args)
    try:
        yield server, first_admin(server)
    finally:
        server.stop()
        assert "Traceback" not in server.output()
