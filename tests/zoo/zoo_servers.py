"""Starting `kernel serve --plugins zoo` for the zoo tests, and talking to it."""

from __future__ import annotations

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
