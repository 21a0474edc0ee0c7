"""Archive downloads that keep the file they started with.

The handler opens the archive before answering, and Litestar's `File` response reads
that open file (through a one-file `FileSystemProtocol`), so an upload or delete that
replaces the archive meanwhile cannot change or cut a download in progress. The file is
streamed in large chunks with `Content-Length` and an `ETag` naming the archive's identity.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Self

from litestar.datastructures import ETag
from litestar.response import File

from kernel_zoo.archives import identity

CHUNK = 4 * 1024 * 1024


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
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the reader
        self.stat = os.fstat(self._file.fileno())

    async def info(self, path: str, **_: Any) -> dict[str, Any]:
        st = self.stat
        return {"name": path, "size": st.st_size, "type": "file", "mtime": st.st_mtime,
                "ino": st.st_ino, "mode": st.st_mode, "islink": False, "nlink": st.st_nlink,
                "created": st.st_ctime, "uid": st.st_uid, "gid": st.st_gid}

    async def open(self, file: str, mode: str = "rb", buffering: int = -1) -> _Reader:
        return _Reader(self._file)


def etag(st: os.stat_result) -> str:
    return hashlib.sha256(repr(identity(st)).encode()).hexdigest()[:32]


def archive_response(path: Path, model: str) -> File:
    archive = OpenArchive(path)
    return File(
        path, file_system=archive, filename=model + ".zip", media_type="application/octet-stream",
        etag=ETag(value=etag(archive.stat)), chunk_size=CHUNK,
    )
