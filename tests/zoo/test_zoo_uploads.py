"""Uploads that must be refused with a 4xx and a message, leaving nothing written."""

from __future__ import annotations

import json
import os
import socket
import time
import zipfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server
from tests.zoo.zoo_archives import (
    classifier_onnx,
    damaged,
    encrypted,
    model_members,
    params,
    snapshot,
    with_method,
    write_archive,
    zip_bytes,
)
from tests.zoo.zoo_servers import serving_zoo

API = "/zoo/v1/public"
MAX_UPLOAD = 4 * 1024 * 1024
MAX_UNPACKED = 3 * 1024 * 1024
M = "m"


class Zoo:
    def __init__(self, server: Server, root: Path, admin: str) -> None:
        self.server, self.root, self.admin = server, root, admin
        self.http = httpx.Client(base_url=server.url, headers={"token": admin}, timeout=30)

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zoo]:
    base = tmp_path_factory.mktemp("uploads")
    root = base / "zoo"
    write_archive(root / "acme" / "vision", "existing")
    limits = ("--zoo-max-upload", "4M", "--zoo-max-unpacked", str(MAX_UNPACKED), "--zoo-max-ratio", "50")
    with serving_zoo(base / "home", root, *limits) as (server, admin), closing(Zoo(server, root, admin)) as zoo:
        yield zoo


def members(**replace: bytes | None) -> list[tuple[str, bytes]]:
    """The members of a good archive of model `m`, with some replaced (None drops one)."""
    out = dict(model_members(M))
    for name, data in replace.items():
        key = f"{M}/{name}"
        if data is None:
            out.pop(key)
        else:
            out[key] = data
    return list(out.items())


GOOD = members()
STORED = zip_bytes(GOOD, compression=zipfile.ZIP_STORED)
BAD = {
    "not a zip": (b"this is not a zip archive", "not a valid zip archive"),
    "name does not match the top folder": (zip_bytes([(n.replace(f"{M}/", "other/"), d) for n, d in GOOD]),
                                           "outside the top folder"),
    "no top folder": (zip_bytes([(n.split("/", 1)[1], d) for n, d in GOOD]), "outside the top folder"),
    "no params JSON": (zip_bytes(members(**{f"{M}.json": None})), "does not contain model parameter file"),
    "params not JSON": (zip_bytes(members(**{f"{M}.json": b"{not json"})), "is not valid JSON"),
    "params not an object": (zip_bytes(members(**{f"{M}.json": b"[1, 2]"})), "is not a JSON object"),
    "params without Checksum": (zip_bytes(members(**{f"{M}.json": json.dumps({"ConfigVersion": 6}).encode()})),
                                "has no Checksum"),
    "no model file": (zip_bytes(members(**{f"{M}.onnx": None})), "does not contain the model file"),
    "labels not JSON": (zip_bytes(members(**{f"labels_{M}.json": b"\xff"})), "is not valid JSON"),
    "dot-dot member": (zip_bytes([*GOOD, (f"{M}/../../evil.sh", b"x")]), "points outside the archive"),
    "absolute member": (zip_bytes([*GOOD, ("/etc/evil", b"x")]), "absolute or non-portable path"),
    "drive letter member": (zip_bytes([*GOOD, ("C:/evil", b"x")]), "absolute or non-portable path"),
    "backslash member": (zip_bytes([*GOOD, (f"{M}\\..\\evil", b"x")]), "absolute or non-portable path"),
    "symlink member": (zip_bytes([*GOOD, (f"{M}/link", b"/etc/passwd")], symlinks=[f"{M}/link"]),
                       "is a symbolic link"),
    "duplicate member": (zip_bytes([*GOOD, (f"{M}/README.md", b"again")]), "appears twice"),
    "zip bomb by ratio": (zip_bytes([*GOOD, (f"{M}/zeros.bin", bytes(2 * 1024 * 1024))]), "a ratio over the limit"),
    "zip bomb by size": (zip_bytes([*GOOD, (f"{M}/random.bin", os.urandom(MAX_UNPACKED))],
                                   compression=zipfile.ZIP_STORED), "over the limit of"),
    "params damaged": (damaged(STORED, b'"ConfigVersion"'), f"{M}/{M}.json cannot be read: Bad CRC-32"),
    "params encrypted": (encrypted(STORED, f"{M}/{M}.json"), f"{M}/{M}.json cannot be read: it is encrypted"),
    "params nested too deep": (zip_bytes(members(**{f"{M}.json": b"[" * 100_000 + b"]" * 100_000}),
                                         compression=zipfile.ZIP_STORED), "is not valid JSON"),
    "model file damaged": (damaged(STORED, b"classifier"), f"{M}/{M}.onnx cannot be read: Bad CRC-32"),
    "model file encrypted": (encrypted(STORED, f"{M}/{M}.onnx"), f"{M}/{M}.onnx cannot be read: it is encrypted"),
    "model file in Deflate64": (with_method(STORED, f"{M}/{M}.onnx", 9),
                                f"{M}/{M}.onnx cannot be read: its compression method (9) is not supported"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_archives_are_refused_and_nothing_is_written(zoo: Zoo, case: str) -> None:
    data, message = BAD[case]
    before = snapshot(zoo.root)
    answer = zoo.http.post(f"{API}/models/acme/vision", files={"file": (f"{M}.zip", data)})
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["detail"]
    assert snapshot(zoo.root) == before
    assert os.listdir(zoo.root / ".uploads") == []


@pytest.mark.parametrize(("zoo_path", "filename", "message"), [
    ("acme/.hidden", f"{M}.zip", "invalid zoo name"),
    ("ac me/vision", f"{M}.zip", "invalid organization name"),
    ("acme/vision", "../m.zip", "must be a plain"),
    ("acme/vision", "m.tar", "must be a plain"),
    ("acme/vision", ".m.zip", "invalid model name"),
    ("acme/vision", "m;rm.zip", "invalid model name"),
    ("acme/vision", "m\n.zip", "invalid model name"),  # a trailing newline is not plain either
    ("acme/vision%0A", f"{M}.zip", "invalid zoo name"),
])
def test_names_that_are_not_plain_are_refused(zoo: Zoo, zoo_path: str, filename: str, message: str) -> None:
    before = snapshot(zoo.root)
    answer = zoo.http.post(f"{API}/models/{zoo_path}", files={"file": (filename, zip_bytes(GOOD))})
    assert answer.status_code == 400 and message in answer.json()["detail"], answer.text
    assert snapshot(zoo.root) == before


def test_upload_without_the_file_field_is_refused(zoo: Zoo) -> None:
    assert "missing form field 'file'" in zoo.http.post(f"{API}/models/acme/vision", data={"x": "1"},
                                                        files={"other": ("m.zip", b"x")}).json()["detail"]
    plain = zoo.http.post(f"{API}/models/acme/vision", content=zip_bytes(GOOD))
    assert plain.status_code == 400 and "multipart/form-data" in plain.json()["detail"]


def test_an_unreadable_allow_overwrite_is_a_422_as_in_fastapi(zoo: Zoo) -> None:
    before = snapshot(zoo.root)
    answer = zoo.http.post(f"{API}/models/acme/vision", params={"allow_overwrite": "maybe"},
                           files={"file": ("existing.zip", zip_bytes(GOOD))})
    assert answer.status_code == 422
    assert answer.json() == {"detail": [{"type": "bool_parsing", "loc": ["query", "allow_overwrite"],
                                         "msg": "Input should be a valid boolean, unable to interpret input",
                                         "input": "maybe"}]}
    assert snapshot(zoo.root) == before
    assert os.listdir(zoo.root / ".uploads") == []


def test_uploads_over_the_limit_are_refused_while_they_arrive(zoo: Zoo) -> None:
    before = snapshot(zoo.root)
    big = os.urandom(MAX_UPLOAD + 1024)
    declared = zoo.http.post(f"{API}/models/acme/vision", files={"file": (f"{M}.zip", big)})
    assert declared.status_code == 413
    assert declared.json() == {"detail": f"upload is larger than the limit of {MAX_UPLOAD} bytes"}

    # Chunked, with no Content-Length: counted as it arrives.
    boundary = "zooboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{M}.zip\"\r\n"
            "Content-Type: application/zip\r\n\r\n").encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(MAX_UPLOAD // 65536 + 4):
            yield os.urandom(65536)
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        chunked = zoo.http.post(f"{API}/models/acme/vision", content=body(),
                                headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert chunked.status_code == 413
    except httpx.RemoteProtocolError:
        pass  # the server may answer and close before the client finishes sending
    assert snapshot(zoo.root) == before
    assert os.listdir(zoo.root / ".uploads") == []


def test_a_client_that_goes_away_mid_upload_leaves_nothing(zoo: Zoo) -> None:
    before = snapshot(zoo.root)
    boundary = "gone"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{M}.zip\"\r\n\r\n").encode()
    port = zoo.server.port
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(
            f"POST {API}/models/acme/vision HTTP/1.1\r\nHost: 127.0.0.1\r\ntoken: {zoo.admin}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 3000000\r\n\r\n".encode()
            + head + os.urandom(1_000_000)
        )
    # The next request is served only after the server noticed; then nothing may remain.
    assert zoo.http.get(f"{API}/models/acme/vision").status_code == 200
    for _ in range(50):
        if not os.listdir(zoo.root / ".uploads"):
            break
        time.sleep(0.05)
    assert os.listdir(zoo.root / ".uploads") == []
    assert snapshot(zoo.root) == before


def test_a_good_upload_still_works_after_all_that(zoo: Zoo) -> None:
    data = zip_bytes(GOOD)
    assert zoo.http.post(f"{API}/models/acme/vision", files={"file": (f"{M}.zip", data)}).status_code == 201
    assert (zoo.root / "acme" / "vision" / f"{M}.zip").read_bytes() == data
    assert params(M, classifier_onnx())["Checksum"] == zoo.http.get(f"{API}/models/acme/vision").json()[M]["Checksum"]
