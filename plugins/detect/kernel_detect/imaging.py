"""Decoding uploaded images and fitting them into a model's input (blocking: run in a thread)."""

from __future__ import annotations

import logging
import os
import sys

import numpy as np

from kernel import BadRequest
from kernel_detect.decoders import Geometry

log = logging.getLogger("kernel.detect")

#: OpenCV refuses images above this many pixels from their header, before allocating the
#: frame; it reads the variable once, when cv2 is first imported.
MAX_PIXELS_VARIABLE = "OPENCV_IO_MAX_IMAGE_PIXELS"


def limit_pixels(max_pixels: int) -> None:
    """Have OpenCV refuse to decode images above `max_pixels` (for this process)."""
    value = str(max_pixels)
    if "cv2" in sys.modules and os.environ.get(MAX_PIXELS_VARIABLE) != value:
        log.warning("OpenCV was loaded before detect: --detect-max-pixels %s does not apply, OpenCV's own "
                    "limit does", max_pixels)
        return
    os.environ[MAX_PIXELS_VARIABLE] = value


def decode_image(data: bytes) -> np.ndarray:
    """A BGR frame; `BadRequest` with pyzm's messages for empty or undecodable bytes."""
    import cv2

    if not data:
        raise BadRequest("Empty file")
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        frame = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error:
        # The header names more pixels than the limit allows (see `limit_pixels`).
        log.warning("refused to decode an image above --detect-max-pixels")
        frame = None
    if frame is None:
        raise BadRequest("Could not decode image")
    return frame


def prepare(frame: np.ndarray, width: int, height: int, layout: str, dtype: np.dtype,
            letterbox: bool) -> tuple[np.ndarray, Geometry]:
    """The model's input tensor for `frame` and how to map boxes back.

    Letterboxed as pyzm does (scale min(tw/w, th/h), grey 114 padding split evenly,
    top/left getting the smaller half) or stretched (SSD); RGB; NCHW floats in [0, 1], or
    NHWC in the input's own dtype (uint8 raw, floats in [-1, 1] as SSD MobileNets expect).
    """
    import cv2

    h, w = frame.shape[:2]
    if letterbox:
        scale = min(width / w, height / h)
        new_w, new_h = round(w * scale), round(h * scale)
        pad_x, pad_y = (width - new_w) // 2, (height - new_h) // 2
        canvas = np.full((height, width, 3), 114, dtype=np.uint8)
        cv2.resize(frame, (new_w, new_h), dst=canvas[pad_y:pad_y + new_h, pad_x:pad_x + new_w],
                   interpolation=cv2.INTER_LINEAR)
        geometry = Geometry(scale, scale, pad_x, pad_y, width, height)
    else:
        canvas = cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
        geometry = Geometry(width / w, height / h, 0, 0, width, height)
    if layout == "NCHW":
        # Each plane scaled straight from the BGR canvas, in RGB order: a sixth of the time
        # cv2.dnn.blobFromImage takes for the same tensor.
        blob = np.empty((1, 3, height, width), dtype=np.float32)
        for plane in range(3):
            np.multiply(canvas[:, :, 2 - plane], np.float32(1 / 255), out=blob[0, plane], casting="unsafe")
        return blob.astype(dtype, copy=False), geometry
    rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
    if dtype == np.uint8:
        return rgb[None], geometry
    if letterbox:
        return (rgb[None].astype(dtype) / 255).astype(dtype), geometry
    return (rgb[None].astype(dtype) / 127.5 - 1).astype(dtype), geometry
