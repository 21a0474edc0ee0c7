"""The zoo on disk: `<root>/<org>/<zoo>/<model>.zip`, and how archives enter and leave it.

Uploads arrive in `<root>/.uploads/` (the same file system, so the final rename is
atomic) and are renamed into place only after they were checked: a crash at any moment
leaves the old archive or the new one, never a part. Upload and delete of one model are
serialized by a per-model lock. Leftovers of a crash in `.uploads/` are removed at startup.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

import kernel
from kernel_zoo.archives import ArchiveCache, ArchiveInfo, check_name, identity

log = logging.getLogger("kernel.zoo")

UPLOADS = ".uploads"
EXT = ".zip"
#: How long a zoo's listing is trusted while its folder is unchanged: an archive rewritten
#: in place by hand (which leaves the folder's mtime alone) shows within this time.
RECHECK_S = 1.0
_json = msgspec.json.Encoder()


class Listing(msgspec.Struct):
    """A zoo's models and the listing answers, valid while its files are unchanged."""

    folder_stamp: tuple[int, int]
    files: tuple[tuple[str, tuple[int, int, int, int]], ...]
    models: dict[str, ArchiveInfo]
    full: bytes
    short: bytes
    checked: float = 0.0


class ZooTree:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uploads = self.root / UPLOADS
        self.cache = ArchiveCache()
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._listings: dict[Path, Listing] = {}

    def prepare(self) -> None:
        """Create the zoo root and an empty uploads folder (removing a crash's leftovers)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise kernel.StartupError(f"--zoo-dir {self.root} is not a directory") from None
        except NotADirectoryError:
            raise kernel.StartupError(
                f"--zoo-dir {self.root} cannot be created: part of its path is not a directory"
            ) from None
        if self.uploads.exists():
            leftovers = list(self.uploads.iterdir())
            if leftovers:
                log.info("removing %d unfinished upload(s) left by an earlier run", len(leftovers))
            shutil.rmtree(self.uploads)
        self.uploads.mkdir()

    # -- reading ---------------------------------------------------------------------------

    def zoo_dir(self, org: str, zoo: str) -> Path:
        """The folder of zoo `org/zoo`; a 400 when it does not exist (as the original)."""
        path = self.root / check_name("organization", org) / check_name("zoo", zoo)
        if not path.is_dir():
            raise kernel.BadRequest(f"Zoo {org}/{zoo} is not found")
        return path

    def zoos(self, org: str) -> list[str]:
        folder = self.root / check_name("organization", org)
        if not folder.is_dir():
            return []
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))

    def all_zoos(self) -> Iterator[tuple[str, str, Path]]:
        if not self.root.is_dir():
            return
        for org in sorted(os.scandir(self.root), key=lambda e: e.name):
            if org.name.startswith(".") or not org.is_dir():
                continue
            for zoo in sorted(os.scandir(org.path), key=lambda e: e.name):
                if not zoo.name.startswith(".") and zoo.is_dir():
                    yield org.name, zoo.name, Path(zoo.path)

    def recent_listing(self, folder: Path) -> Listing | None:
        """The cached listing of a zoo folder if nothing says it changed (no file access
        beyond one stat of the folder, so it may run on the event loop)."""
        listing = self._listings.get(folder)
        if listing is None or time.monotonic() - listing.checked > RECHECK_S:
            return None
        st = os.stat(folder)
        return listing if (st.st_ino, st.st_mtime_ns) == listing.folder_stamp else None

    def listing(self, folder: Path) -> Listing:
        """Every valid archive of a zoo folder by model name, sorted by name, and the
        encoded answers; rebuilt only when a file's identity changed. Blocks on the disk."""
        st = os.stat(folder)
        files = []
        for entry in os.scandir(folder):
            if entry.name.endswith(EXT) and not entry.name.startswith("."):
                try:
                    files.append((entry.name, identity(entry.stat())))
                except FileNotFoundError:
                    continue  # deleted while we listed
        files.sort()
        old = self._listings.get(folder)
        if old is not None and old.files == tuple(files):
            old.folder_stamp, old.checked = (st.st_ino, st.st_mtime_ns), time.monotonic()
            return old
        models: dict[str, ArchiveInfo] = {}
        for name, _ in files:
            path = folder / name
            try:
                info = self.cache.get(path, path.stat())
            except FileNotFoundError:
                continue
            if info is not None:
                models[name[: -len(EXT)]] = info
        listing = Listing(
            folder_stamp=(st.st_ino, st.st_mtime_ns), files=tuple(files), models=models,
            full=_json.encode({name: info.params for name, info in models.items()}),
            short=_json.encode({name: {} for name in models}), checked=time.monotonic(),
        )
        self._listings[folder] = listing
        return listing

    def models(self, folder: Path) -> dict[str, ArchiveInfo]:
        return self.listing(folder).models

    def model(self, org: str, zoo: str, model: str) -> tuple[Path, ArchiveInfo]:
        """The archive of a model and what it holds; a 400 when there is none (as the original)."""
        path = self.zoo_dir(org, zoo) / (check_name("model", model) + EXT)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            st = None
        info = self.cache.get(path, st) if st is not None and path.is_file() else None
        if info is None:
            raise kernel.BadRequest(f"Model {model} is not found in model zoo {org}/{zoo}")
        return path, info

    # -- changing --------------------------------------------------------------------------

    def lock(self, org: str, zoo: str, model: str) -> asyncio.Lock:
        return self._locks.setdefault((org, zoo, model), asyncio.Lock())

    def commit(self, temp: Path, final: Path, info: ArchiveInfo, overwrite: bool) -> None:
        """Move a checked upload into place (call under the model's lock)."""
        if final.exists() and not overwrite:
            raise kernel.BadRequest(
                f"Model {final.stem} already exists in zoo {final.parent.parent.name}/{final.parent.name}"
            )
        os.replace(temp, final)
        kernel.fsync_dir(final.parent)
        self.cache.put(final, final.stat(), info)
        self._listings.pop(final.parent, None)

    def delete(self, org: str, zoo: str, model: str) -> None:
        """Remove a model's archive (call under the model's lock)."""
        path = self.zoo_dir(org, zoo) / (check_name("model", model) + EXT)
        try:
            path.unlink()
        except FileNotFoundError:
            raise kernel.BadRequest(f"Model {model} is not found in zoo {org}/{zoo}") from None
        kernel.fsync_dir(path.parent)
        self.cache.forget(path)
        self._listings.pop(path.parent, None)
