"""Archive downloads that keep the file they started with, whole or by byte range.

The handler opens the archive before answering and the answer sends that open file, so
an upload or delete that replaces the archive meanwhile cannot change or cut a download
in progress. Answers carry `Content-Length`, `Accept-Ranges` and an `ETag` naming the
archive's identity; a `Range` of one span (or spans that merge into one) is answered
206, as the original's Starlette does, so `curl -C -` and `wget -c` resume. Where the
server offers the ASGI zero-copy send extension (the kernel's does), the file goes to the
socket with `sendfile(2)`; elsewhere it is read in large chunks.
"""

from __future__ import annotations

import hashlib
import os
from email.utils import formatdate
from pathlib import Path
from typing import Any

import msgspec
from litestar.datastructures import ETag
from litestar.response import File
from litestar.response.file import ASGIFileResponse
from litestar.types import FileInfo, Receive, Scope, Send

import kernel
from kernel_zoo.archives import identity

CHUNK = 4 * 1024 * 1024
#: More spans than this in one `Range` are answered with the whole file, as Starlette does.
MAX_RANGES = 100


class OpenArchive:
    """A `FileSystemProtocol` describing one file opened in advance (Litestar's `File`
    takes its headers from it; the bytes are sent by `_ArchiveSender`)."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed once sent
        self.stat = os.fstat(self.file.fileno())

    def file_info(self, path: str) -> FileInfo:
        st = self.stat
        return {"name": path, "size": st.st_size, "type": "file", "mtime": st.st_mtime,
                "ino": st.st_ino, "mode": st.st_mode, "islink": False, "nlink": st.st_nlink,
                "created": st.st_ctime, "uid": st.st_uid, "gid": st.st_gid}

    async def info(self, path: str, **_: Any) -> FileInfo:
        return self.file_info(path)

    async def open(self, file: str, mode: str = "rb", buffering: int = -1) -> Any:
        raise NotImplementedError("archives are sent by _ArchiveSender")


class ArchiveFile(File):
    """Litestar's `File` headers over an `OpenArchive`; the body is `_ArchiveSender`'s."""

    def __init__(self, archive: OpenArchive, path: Path, model: str) -> None:
        # The info given up front: otherwise the answer starts an `info()` coroutine that a
        # refused range never awaits (a RuntimeWarning on stderr).
        super().__init__(
            path, file_system=archive, file_info=archive.file_info(str(path)), filename=model + ".zip",
            media_type="application/octet-stream",
            etag=ETag(value=etag(archive.stat)), chunk_size=CHUNK, headers={"accept-ranges": "bytes"},
        )
        self.archive = archive

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> _ArchiveSender:  # type: ignore[override]
        return _ArchiveSender(super().to_asgi_response(*args, **kwargs), self.archive)


class RangeError(Exception):
    def __init__(self, status: int, detail: str, size: int | None = None) -> None:
        self.status, self.detail, self.size = status, detail, size


class _ArchiveSender:
    """Sends the headers `File` built (206 ones for a range), then the open file's bytes."""

    def __init__(self, response: ASGIFileResponse, archive: OpenArchive) -> None:
        self.response, self.archive = response, archive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response, size = self.response, self.archive.stat.st_size
        with self.archive.file as file:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            try:
                validators = {response.etag.to_header(), formatdate(self.archive.stat.st_mtime, usegmt=True)}
                span = wanted_span(headers, size, validators)
            except RangeError as exc:
                await _send_error(send, exc)
                return
            start, count = span or (0, size)
            if span is not None:
                response.status_code = 206
                response.headers["content-range"] = f"bytes {start}-{start + count - 1}/{size}"
            response.headers["content-length"] = str(count)  # kept: `File` only sets a default
            await response.start_response(send)
            if response.is_head_response:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await kernel.send_file(scope, send, file, start, count)
        await response.after_response()


async def _send_error(send: Send, error: RangeError) -> None:
    body = msgspec.json.encode({"detail": error.detail})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.size is not None:
        headers.append((b"content-range", f"bytes */{error.size}".encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def wanted_span(headers: dict[str, str], size: int, validators: set[str]) -> tuple[int, int] | None:
    """(start, count) of the one span a `Range` header asks for, or None for the whole
    file: no `Range`, an `If-Range` naming another version (`validators` are this one's
    ETag and Last-Modified), too many spans, or spans that do not merge into one. Raises
    `RangeError` (400 malformed, 416 unsatisfiable) where Starlette answers so."""
    asked = headers.get("range")
    if asked is None:
        return None
    if_range = headers.get("if-range")
    if if_range is not None and if_range not in validators:
        return None
    units, sep, spec = asked.partition("=")
    if not sep:
        raise RangeError(400, "Malformed range header")
    if units.strip().lower() != "bytes":
        raise RangeError(400, "Only bytes ranges are supported")
    if spec.count(",") + 1 > MAX_RANGES:
        return None
    spans = []
    for part in spec.split(","):
        first, dash, last = part.strip().partition("-")
        if not dash:
            continue  # not a span: ignored, as Starlette does
        try:
            if first.strip():
                start = int(first)
                end = min(int(last) + 1, size) if last.strip() else size
            else:
                start, end = max(size - int(last), 0), size
        except ValueError:
            continue
        spans.append((start, end))
    if not spans:
        raise RangeError(400, "Range header: range must be requested")
    if any(not 0 <= start < size for start, _ in spans):
        raise RangeError(416, "Range not satisfiable", size)
    if any(start >= end for start, end in spans):
        raise RangeError(400, "Range header: start must be less than end")
    spans.sort()
    merged_start, merged_end = spans[0]
    for start, end in spans[1:]:
        if start > merged_end:
            return None  # several separate spans: the whole file (multipart answers are not served)
        merged_end = max(merged_end, end)
    return merged_start, merged_end - merged_start


def etag(st: os.stat_result) -> str:
    return hashlib.sha256(repr(identity(st)).encode()).hexdigest()[:32]


def archive_response(path: Path, model: str) -> File:
    return ArchiveFile(OpenArchive(path), path, model)
