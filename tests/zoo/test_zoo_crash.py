"""A server killed in the middle of an upload leaves the zoo as it was: the old archive
intact, no partial file in any zoo, and the leftovers cleaned at the next start."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import httpx

from tests.zoo.zoo_archives import archive, classifier_onnx, snapshot, write_archive
from tests.zoo.zoo_servers import first_admin, start_zoo

API = "/zoo/v1/public"


def test_sigkill_mid_upload_keeps_the_zoo_consistent(tmp_path: Path) -> None:
    root = tmp_path / "zoo"
    old = write_archive(root / "acme" / "vision", "m").read_bytes()
    server = start_zoo(tmp_path / "home", root)
    admin = first_admin(server)
    before = snapshot(root)

    boundary = "killed"
    replacement = archive("m", classifier_onnx(seed=5)) + os.urandom(8 * 1024 * 1024)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.zip\"\r\n\r\n").encode()
    body += replacement + f"\r\n--{boundary}--\r\n".encode()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(
            f"POST {API}/models/acme/vision?allow_overwrite=true HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"token: {admin}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2]
        )
        deadline = time.monotonic() + 10
        while not any((root / ".uploads").iterdir()) and time.monotonic() < deadline:
            time.sleep(0.02)  # until the server is writing the upload
        assert any((root / ".uploads").iterdir())
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)

    assert snapshot(root) == before
    assert (root / "acme" / "vision" / "m.zip").read_bytes() == old

    again = start_zoo(tmp_path / "home", root)
    try:
        assert list((root / ".uploads").iterdir()) == []
        with httpx.Client(base_url=again.url, headers={"token": admin}) as http:
            assert list(http.get(f"{API}/models/acme/vision").json()) == ["m"]
            assert http.get(f"{API}/models/acme/vision/m").content == old
    finally:
        again.stop()
