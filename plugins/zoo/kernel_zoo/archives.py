"""Model archives: what makes one valid, and what listings read from it.

An archive `<model>.zip` holds a top folder `<model>/` with the params JSON `<model>.json`,
the model binary (`ModelPath` of the params, or `<model>.<ext>`), and optionally a labels
JSON (`LabelsPath`) and a README.md. Uploads are checked in full before they are moved
into the zoo; archives already in the zoo are read through a cache keyed by the file's
identity (inode, size, mtime), so a listing does not reopen every zip.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

import kernel

log = logging.getLogger("kernel.zoo")

_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
#: Largest JSON or README member read into memory.
MAX_TEXT_MEMBER = 16 * 1024 * 1024
#: What reading a member of a damaged or unusual zip raises: a bad CRC or header, a broken
#: deflate stream, a truncated file, an encrypted member (RuntimeError) or a compression
#: method zipfile lacks, such as Deflate64 (NotImplementedError, a RuntimeError).
READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, RuntimeError)


def check_name(kind: str, name: str) -> str:
    """`name` if it is a plain name (letters, digits, `_`, `-`, `.`, not leading `.`)."""
    if not _NAME_RE.fullmatch(name):
        raise kernel.BadRequest(f"invalid {kind} name {name!r}: use letters, digits, '_', '-' and '.', not leading '.'")
    return name


class Limits(msgspec.Struct, frozen=True):
    max_unpacked: int
    max_ratio: float
    max_members: int


class ArchiveInfo(msgspec.Struct, frozen=True):
    """What the routes and the model source need from one archive."""

    params: dict[str, Any]
    labels: dict[str, Any]
    readme: str
    checksum: str
    #: Member name of the model binary inside the zip.
    binary: str


class InvalidArchive(kernel.BadRequest):
    """An archive that breaks a rule; its message says which, never the server's paths."""


def _unreadable(info: zipfile.ZipInfo, exc: Exception) -> InvalidArchive:
    if info.flag_bits & 0x1:
        reason = "it is encrypted"
    elif isinstance(exc, NotImplementedError):
        reason = f"its compression method ({info.compress_type}) is not supported"
    elif isinstance(exc, zlib.error):  # zlib's message names codes, not the problem
        reason = "its compressed data is damaged"
    else:
        reason = str(exc)
    return InvalidArchive(f"archive member {info.filename} cannot be read: {reason}")


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return z.read(info)
    except READ_ERRORS as exc:
        raise _unreadable(info, exc) from None


def _json_member(z: zipfile.ZipFile, member: zipfile.ZipInfo, what: str) -> Any:
    if member.file_size > MAX_TEXT_MEMBER:
        raise InvalidArchive(f"{what} {member.filename} is larger than {MAX_TEXT_MEMBER} bytes")
    data = _read_member(z, member)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to decode
        raise InvalidArchive(f"{what} {member.filename} is not valid JSON: {exc}") from None


def _check_members(infos: list[zipfile.ZipInfo], model: str, archive_size: int, limits: Limits) -> None:
    if len(infos) > limits.max_members:
        raise InvalidArchive(f"archive holds {len(infos)} members, over the limit of {limits.max_members}")
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        if not name or name.startswith("/") or _DRIVE_RE.match(name) or "\\" in name or "\x00" in name:
            raise InvalidArchive(f"archive member {name!r} has an absolute or non-portable path")
        if ".." in PurePosixPath(name).parts:
            raise InvalidArchive(f"archive member {name!r} points outside the archive ('..')")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidArchive(f"archive member {name!r} is a symbolic link")
        key = name.rstrip("/")
        if key in seen:
            raise InvalidArchive(f"archive member {name!r} appears twice")
        seen.add(key)
        if PurePosixPath(name).parts[0] != model:
            raise InvalidArchive(f"archive member {name!r} is outside the top folder {model + '/'!r}")
        total += info.file_size
    if total > limits.max_unpacked:
        raise InvalidArchive(f"archive unpacks to {total} bytes, over the limit of {limits.max_unpacked}")
    if total > limits.max_ratio * max(archive_size, 1):
        raise InvalidArchive(
            f"archive unpacks to {total} bytes from {archive_size}: a ratio over the limit of {limits.max_ratio:g}"
        )


def read_archive(path: Path, model: str, limits: Limits | None = None) -> ArchiveInfo:
    """Check the archive at `path` for `model` and read its params, labels and README.

    With `limits` (uploads) every member is checked for unsafe paths, links, duplicates and
    zip-bomb sizes first. Raises `InvalidArchive` naming the first rule broken."""
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidArchive(f"model archive {model}.zip is not a valid zip archive: {exc}") from None
    with z:
        infos = z.infolist()
        if limits is not None:
            _check_members(infos, model, path.stat().st_size, limits)
        members = {i.filename: i for i in infos if not i.is_dir()}
        if not any(name.startswith(model + "/") for name in members):
            raise InvalidArchive(f"model archive {model}.zip has no top folder {model + '/'!r}")
        params_info = members.get(f"{model}/{model}.json")
        if params_info is None:
            raise InvalidArchive(f"model archive {model}.zip does not contain model parameter file {model}/{model}.json")
        params = _json_member(z, params_info, "model parameter file")
        if not isinstance(params, dict):
            raise InvalidArchive(f"model parameter file {params_info.filename} is not a JSON object")
        checksum = params.get("Checksum")
        if not isinstance(checksum, str) or not checksum:
            raise InvalidArchive(f"model parameter file {params_info.filename} has no Checksum")
        binary = _binary(params, members, model)
        labels: dict[str, Any] = {}
        labels_name = _section(params, "POST_PROCESS").get("LabelsPath")
        if isinstance(labels_name, str) and labels_name:
            labels_info = members.get(f"{model}/{labels_name}")
            if labels_info is not None:
                labels = _json_member(z, labels_info, "labels file")
                if not isinstance(labels, dict):
                    raise InvalidArchive(f"labels file {labels_info.filename} is not a JSON object")
        readme = ""
        readme_info = next((i for n, i in members.items() if n.lower() == f"{model}/readme.md".lower()), None)
        if readme_info is not None and readme_info.file_size <= MAX_TEXT_MEMBER:
            readme = _read_member(z, readme_info).decode("utf-8", errors="replace")
        # Reading each member above also checked its CRC; a damaged binary fails here.
        if limits is not None:
            _check_crc(z, members[binary])
    return ArchiveInfo(params=params, labels=labels, readme=readme, checksum=checksum, binary=binary)


def _section(params: dict[str, Any], key: str) -> dict[str, Any]:
    value = params.get(key)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return value[0]
    return {}


def _binary(params: dict[str, Any], members: dict[str, zipfile.ZipInfo], model: str) -> str:
    named = _section(params, "MODEL_PARAMETERS").get("ModelPath")
    if isinstance(named, str) and named:
        if f"{model}/{named}" in members:
            return f"{model}/{named}"
        raise InvalidArchive(f"model archive {model}.zip does not contain the model file {named} that ModelPath names")
    for name in sorted(members):
        path = PurePosixPath(name)
        if path.parent.name == model and len(path.parts) == 2 and path.stem == model and path.suffix != ".json":
            return name
    raise InvalidArchive(f"model archive {model}.zip does not contain a model file {model}/{model}.<ext>")


def _check_crc(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    try:
        with z.open(info) as f:
            while f.read(1024 * 1024):
                pass
    except READ_ERRORS as exc:
        raise _unreadable(info, exc) from None


def identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What changes whenever an archive file is replaced or rewritten."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ArchiveCache:
    """`read_archive` results by path, valid while the file's identity is unchanged.

    Archives that fail to read are remembered too (as None) and logged once, so a bad
    file dropped into the zoo by hand is skipped, not reread on every listing."""

    def __init__(self) -> None:
        self._entries: dict[Path, tuple[tuple[int, int, int, int], ArchiveInfo | None]] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, st: os.stat_result) -> ArchiveInfo | None:
        ident = identity(st)
        with self._lock:
            entry = self._entries.get(path)
        if entry is not None and entry[0] == ident:
            return entry[1]
        try:
            info: ArchiveInfo | None = read_archive(path, path.stem)
        except InvalidArchive as exc:
            log.warning("skipping %s: %s", path.name, exc.detail)
            info = None
        with self._lock:
            self._entries[path] = (ident, info)
        return info

    def put(self, path: Path, st: os.stat_result, info: ArchiveInfo) -> None:
        with self._lock:
            self._entries[path] = (identity(st), info)

    def forget(self, path: Path) -> None:
        with self._lock:
            self._entries.pop(path, None)
