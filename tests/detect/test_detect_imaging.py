"""The model input detect builds from a frame: letterboxed as pyzm does, RGB planes in
[0, 1], checked against the same steps done one by one with OpenCV; and the budget of
decoded frames requests hold."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from kernel_detect.imaging import prepare
from kernel_detect.service import FrameMemory

from kernel import Unavailable


def reference(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """pyzm's letterbox and blob, step by step: scale to fit, pad grey 114 evenly (top
    and left get the smaller half), BGR to RGB, HWC to CHW, divide by 255."""
    h, w = frame.shape[:2]
    scale = min(width / w, height / h)
    new_w, new_h = round(w * scale), round(h * scale)
    left, top = (width - new_w) // 2, (height - new_h) // 2
    resized = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    padded = cv2.copyMakeBorder(resized, top, height - new_h - top, left, width - new_w - left,
                                cv2.BORDER_CONSTANT, value=(114, 114, 114))
    rgb = cv2.cvtColor(padded, cv2.COLOR_BGR2RGB)
    return (rgb.transpose(2, 0, 1)[None] / 255).astype(np.float32)


@pytest.mark.parametrize("shape", [(1080, 810), (480, 1280), (640, 640), (101, 37)])
def test_letterboxed_nchw_tensor_matches_the_step_by_step_one(shape: tuple[int, int]) -> None:
    frame = np.random.default_rng(7).integers(0, 256, (*shape, 3), dtype=np.uint8)
    tensor, geometry = prepare(frame, 640, 640, "NCHW", np.dtype(np.float32), letterbox=True)
    assert tensor.shape == (1, 3, 640, 640) and tensor.dtype == np.float32
    assert tensor.flags.c_contiguous  # runtimes copy a strided input first
    np.testing.assert_allclose(tensor, reference(frame, 640, 640), atol=1e-6)
    assert geometry.input_width == geometry.input_height == 640


def test_planes_are_red_green_blue_and_padding_is_grey() -> None:
    frame = np.zeros((320, 640, 3), np.uint8)
    frame[:] = (255, 0, 51)  # BGR: blue 255, red 51
    tensor, geometry = prepare(frame, 640, 640, "NCHW", np.dtype(np.float32), letterbox=True)
    assert geometry.pad_y == 160 and geometry.pad_x == 0
    middle = tensor[0, :, 320, 320]
    np.testing.assert_allclose(middle, [51 / 255, 0, 1], atol=1e-6)
    np.testing.assert_allclose(tensor[0, :, 10, 320], [114 / 255] * 3, atol=1e-6)


def test_half_precision_input_gets_half_precision_tensor() -> None:
    frame = np.full((100, 200, 3), 200, np.uint8)
    tensor, _ = prepare(frame, 320, 320, "NCHW", np.dtype(np.float16), letterbox=True)
    assert tensor.dtype == np.float16
    assert abs(float(tensor[0, 0, 160, 160]) - 200 / 255) < 1e-3


def test_frame_memory_counts_a_shared_frame_once_and_refuses_past_its_budget() -> None:
    memory = FrameMemory(limit=250)
    big, other = np.zeros(200, np.uint8), np.zeros(100, np.uint8)
    with memory.hold(big), memory.hold(big):  # two requests on one cached frame
        assert memory.held == 200
        with pytest.raises(Unavailable, match="--detect-frame-memory"), memory.hold(other):
            pass
    assert memory.held == 0
    with memory.hold(np.zeros(1000, np.uint8)):  # one frame is always let in
        assert memory.held == 1000
    assert memory.held == 0
