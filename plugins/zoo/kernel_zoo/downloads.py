"""Archive downloads that keep the file they started with.

The handler opens the archive before answering, and Litestar's `File` response reads
that open file (through a one-file `FileSystemProtocol`), so an upload or delete that
replaces the archive meanwhile cannot change or cut a download in progress. The file is
sent with `Content-Length` and an `ETag` naming the archive's identity: where the server
offers the ASGI zero-copy send extension (the kernel's does), the open file goes to the
socket with `sendfile(2)`; elsewhere it is streamed in large chunks.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Self

from litestar.datastructures import ETag
from litestar.enums import ASGIExtension
from litestar.response import File
from litestar.response.file import ASGIFileResponse
from litestar.types import Receive, Scope, Send

from kernel_zoo.archives import identity

CHUNK = 4 * 1024 * 1024
ZEROCOPY_SEND = ASGIExtension.ZERO_COPY_SEND_EXTENSION.value


class _Reader:
    """An async file over an already open file, reading from its own offset; leaving its
    context closes the file (a client gone before that leaves it to the garbage collector)."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self._fd = file.fileno()
        self._offset = 0

    async def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = os.fstat(self._fd).st_size - self._offset
        # Reading the page cache is faster than a hop to a worker thread per chunk.
        data = os.pread(self._fd, size, self._offset)
        self._offset += len(data)
        return data

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._file.close()


class OpenArchive:
    """A `FileSystemProtocol` serving one file opened in advance."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed once sent
        self.stat = os.fstat(self.file.fileno())

    async def info(self, path: str, **_: Any) -> dict[str, Any]:
        st = self.stat
        return {"name": path, "size": st.st_size, "type": "file", "mtime": st.st_mtime,
                "ino": st.st_ino, "mode": st.st_mode, "islink": False, "nlink": st.st_nlink,
                "created": st.st_ctime, "uid": st.st_uid, "gid": st.st_gid}

    async def open(self, file: str, mode: str = "rb", buffering: int = -1) -> _Reader:
        return _Reader(self.file)


class ArchiveFile(File):
    """Litestar's `File` over an `OpenArchive`, sent zero-copy where the server can."""

    def __init__(self, archive: OpenArchive, path: Path, model: str) -> None:
        super().__init__(
            path, file_system=archive, filename=model + ".zip", media_type="application/octet-stream",
            etag=ETag(value=etag(archive.stat)), chunk_size=CHUNK,
        )
        self.archive = archive

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> _ZeroCopyFile:  # type: ignore[override]
        return _ZeroCopyFile(super().to_asgi_response(*args, **kwargs), self.archive)


class _ZeroCopyFile:
    """Sends the headers `File` built, then the open file in one zero-copy message."""

    def __init__(self, response: ASGIFileResponse, archive: OpenArchive) -> None:
        self.response, self.archive = response, archive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = self.response
        if ZEROCOPY_SEND not in (scope.get("extensions") or {}) or response.is_head_response:
            await response(scope, receive, send)
            return
        with self.archive.file as file:
            await response.start_response(send)
            await send({"type": ZEROCOPY_SEND, "file": file, "count": response.content_length,  # type: ignore[typeddict-item]
                        "more_body": False})
        await response.after_response()


def etag(st: os.stat_result) -> str:
    return hashlib.sha256(repr(identity(st)).encode()).hexdigest()[:32]


def archive_response(path: Path, model: str) -> File:
    return ArchiveFile(OpenArchive(path), path, model)
