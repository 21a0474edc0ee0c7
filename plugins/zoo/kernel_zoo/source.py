"""The zoo as a model source of the kernel's registry: `zoo.<org>.<zoo>.<model>`.

Archives whose model binary a backend reads (`.onnx`, `.tflite`) are offered to the
registry; the binary is extracted once per archive identity into a cache under the
kernel's state directory (extracted to a temporary name of its own, then renamed), and
caches of archives that are gone are removed on the next scan. Scans run one at a time.
Other archives are served as files only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import uuid
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import kernel
from kernel_zoo.archives import READ_ERRORS, ArchiveInfo, identity
from kernel_zoo.tree import EXT, ZooTree

log = logging.getLogger("kernel.zoo")

NAME = "zoo"
FORMATS = {".onnx": "onnx", ".tflite": "tflite"}


class ZooSource(kernel.ModelSource):
    name = NAME

    def __init__(self, tree: ZooTree, cache_dir: Path) -> None:
        self.tree = tree
        self.cache_dir = cache_dir
        # Each rescan (one per upload or delete) scans in a worker thread of its own; one
        # scan's pruning must not remove what another, running beside it, just extracted.
        self._scanning = threading.Lock()

    def scan(self) -> list[kernel.ModelSpec]:
        with self._scanning:
            return self._scan()

    def _scan(self) -> list[kernel.ModelSpec]:
        specs: list[kernel.ModelSpec] = []
        keep: set[str] = set()
        for org, zoo, folder in self.tree.all_zoos():
            for model, info in self.tree.models(folder).items():
                fmt = FORMATS.get(PurePosixPath(info.binary).suffix.lower())
                if fmt is None:
                    continue
                archive = folder / (model + EXT)
                try:
                    key, binary = self._extract(archive, info)
                except READ_ERRORS as exc:  # an archive copied in by hand may be damaged
                    log.warning("model %s/%s/%s not offered to the registry: %s", org, zoo, model, exc)
                    continue
                keep.add(key)
                specs.append(kernel.ModelSpec(
                    name=model, qualified=f"{NAME}.{org}.{zoo}.{model}", source=NAME,
                    path=str(binary), format=fmt, labels=_labels(info.labels),
                    params={"zoo": f"{org}/{zoo}", "checksum": info.checksum},
                ))
        self._prune(keep)
        return specs

    def _extract(self, archive: Path, info: ArchiveInfo) -> tuple[str, Path]:
        st = archive.stat()
        key = hashlib.sha256(f"{archive}|{identity(st)}".encode()).hexdigest()[:24]
        target = self.cache_dir / key / PurePosixPath(info.binary).name
        if target.is_file():
            return key, target
        target.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own: another kernel sharing the state directory may extract it too.
        partial = target.with_name(f"{target.name}.{uuid.uuid4().hex}.partial")
        try:
            with open(partial, "xb") as dst, zipfile.ZipFile(archive) as z, z.open(info.binary) as src:
                shutil.copyfileobj(src, dst, 1024 * 1024)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return key, target

    def _prune(self, keep: set[str]) -> None:
        if not self.cache_dir.is_dir():
            return
        for entry in self.cache_dir.iterdir():
            if entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)


def _labels(labels: dict[str, Any]) -> tuple[str, ...] | None:
    """Labels `{"0": "cat", ...}` as a tuple by class index, when the indices are 0..n-1."""
    try:
        indexed = {int(k): str(v) for k, v in labels.items()}
    except (TypeError, ValueError):
        return None
    if not indexed or sorted(indexed) != list(range(len(indexed))):
        return None
    return tuple(indexed[i] for i in range(len(indexed)))
