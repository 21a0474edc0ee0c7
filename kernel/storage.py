"""The storage driver contract, and the `file://` driver the kernel ships.

Plugins keep objects (model archives, token files) through a driver picked by URL scheme
from the `kernel.storage` entry-point group: `kernel.storage("file:///srv/zoo")`. Keys are
`/`-separated relative names; a key that could escape the root (`..`, an absolute path,
a NUL byte, a backslash), or that uses a name reserved for partial writes (`.tmp-...`),
is rejected with `InvalidKey` (a 400); a key that is both an object and a prefix of other
keys (`a` beside `a/b`) is a `Conflict` (a 409).
"""

from __future__ import annotations

import abc
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from kernel.errors import BadRequest, Conflict, NotFound

CHUNK = 1024 * 1024
#: Prefix of the file driver's partial writes, which listings skip.
TEMPORARY = ".tmp-"


class InvalidKey(BadRequest, ValueError):
    """A storage key that is empty or could escape the storage root."""


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative name; raise `InvalidKey` otherwise."""
    if not key or "\x00" in key or "\\" in key or key.startswith("/"):
        raise InvalidKey(f"invalid storage key {key!r}")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidKey(f"invalid storage key {key!r}")
    if any(part.startswith(TEMPORARY) for part in parts):
        raise InvalidKey(f"invalid storage key {key!r}: names beginning {TEMPORARY!r} are the driver's")
    return key


class Storage(abc.ABC):
    """Objects under keys. Writes are atomic: a reader sees the old object or the new one,
    never a part, and a crash mid-write leaves the old one."""

    @classmethod
    @abc.abstractmethod
    def from_url(cls, url: str) -> Storage:
        """A driver for `url` (whose scheme is this driver's entry-point name)."""

    @abc.abstractmethod
    def read(self, key: str) -> bytes:
        """The whole object; `NotFound` if there is none."""

    @abc.abstractmethod
    def write(self, key: str, data: bytes | Iterable[bytes]) -> int:
        """Store `data` (bytes, or chunks for large objects) atomically; return its size.
        If the chunk iterator raises, nothing is stored and the exception propagates."""

    @abc.abstractmethod
    def stream(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The object in chunks, for large objects; `NotFound` if there is none."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with `prefix`, sorted."""

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Remove the object; False if there was none."""

    def local_path(self, key: str) -> Path | None:
        """A file holding the object, for zero-copy responses; None if not on local disk."""
        return None


class FileStorage(Storage):
    """Objects as files under a root directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_url(cls, url: str) -> FileStorage:
        parts = urlsplit(url)
        if parts.scheme not in ("", "file"):
            raise ValueError(f"not a file URL: {url}")
        return cls(unquote(parts.netloc + parts.path) if parts.scheme else url)

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*check_key(key).split("/"))
        # A symlink inside the root could still point outside it.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidKey(f"invalid storage key {key!r}")
        return path

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"no object {key!r}") from None

    def write(self, key: str, data: bytes | Iterable[bytes]) -> int:
        path = self._path(key)
        clash = Conflict(f"storage key {key!r} clashes with an object or a prefix of other keys")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # a part of the key is an object
            raise clash from None
        if path.is_dir():  # the key is a prefix of other keys
            raise clash
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMPORARY, suffix=".part")
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
                    f.write(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
        return size

    def stream(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        path = self._path(key)
        try:
            f = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"no object {key!r}") from None

        def chunks() -> Iterator[bytes]:
            with f:
                while block := f.read(chunk_size):
                    yield block

        return chunks()

    def list(self, prefix: str = "") -> list[str]:
        keys = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(TEMPORARY)]
            rel = Path(dirpath).relative_to(self.root)
            for name in filenames:
                if name.startswith(TEMPORARY):
                    continue
                key = (rel / name).as_posix() if rel.parts else name
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):  # no object of that key
            return False
        fsync_dir(path.parent)
        return True

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in the directory `path` durable (the entry itself, not only
    the file's data, survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
