"""Turning a detector's raw outputs into boxes in the original image's pixels.

Decoders, chosen per model (`decoder` in its settings) or detected from output shapes:

- `yolov8`: one output [1, 4+C, N] or [1, N, 4+C] (oriented so rows are boxes), cx, cy,
  w, h in input pixels, class scores without objectness (YOLOv8/11, Ultralytics exports);
- `yolov5`: one output [1, N, 5+C]: cx, cy, w, h, objectness, class scores; the score is
  objectness x class score (YOLOv5, and Darknet models converted by the onnxruntime backend);
- `end2end`: one output [1, N, 6]: x1, y1, x2, y2, score, class, NMS already done;
- `darknet`: OpenCV's Darknet outputs, one [N, 5+C] per YOLO head: cx, cy, w, h relative to
  the input, objectness, class scores already multiplied by objectness;
- `ssd`: TFLite detection post-processing: boxes [1, N, 4] (ymin, xmin, ymax, xmax relative),
  classes [1, N], scores [1, N], count [1].

Then, as pyzm does: candidates above min(0.2, threshold), class-agnostic NMS at 0.4,
detections below the threshold dropped, coordinates rounded to integers.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from kernel import TensorInfo

DECODERS = ("yolov8", "yolov5", "end2end", "darknet", "ssd")
NMS_THRESHOLD = 0.4
CANDIDATE_THRESHOLD = 0.2


class NoDecoder(ValueError):
    """The model's outputs fit no detection decoder."""


class Geometry(NamedTuple):
    """How the image was fitted into the model's input: x_in = x * scale_x + pad_x."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    #: The model's input size in pixels.
    input_width: int
    input_height: int


class Detection(NamedTuple):
    label: str
    confidence: float
    box: tuple[int, int, int, int]


def choose(outputs: list[TensorInfo], labels: tuple[str, ...] | None, fmt: str, end2end: bool) -> str:
    """The decoder for a model with these outputs; `NoDecoder` when none fits."""
    shapes = [o.shape for o in outputs]
    if len(outputs) in (3, 4) and any(len(s) == 3 and s[-1] == 4 for s in shapes):
        return "ssd"
    if len(outputs) > 1 or (len(shapes[0]) == 2 and shapes[0][-1] > 5):
        if all(len(s) == 2 and s[-1] == shapes[0][-1] and s[-1] > 5 for s in shapes):
            return "darknet"
        raise NoDecoder(f"outputs {_describe(outputs)} fit no detection decoder")
    shape = shapes[0]
    if len(shape) != 3:
        raise NoDecoder(f"output {_describe(outputs)} fits no detection decoder")
    if end2end or (shape[2] == 6 and shape[1] > 6):
        return "end2end"
    rows, cols = shape[1], shape[2]
    # Dynamic dimensions are -1; channels are the smaller known dimension.
    channels = cols if rows < 0 or (0 <= cols <= rows) else rows
    if channels < 5:
        raise NoDecoder(f"output {_describe(outputs)} fits no detection decoder")
    if labels:
        if channels == len(labels) + 5:
            return "yolov5"
        if channels == len(labels) + 4:
            return "yolov8"
    return "yolov5" if fmt == "darknet" else "yolov8"


def _describe(outputs: list[TensorInfo]) -> str:
    return ", ".join(f"{o.name} {list(o.shape)}" for o in outputs)


def decode(
    kind: str,
    arrays: list[np.ndarray],
    geometry: Geometry,
    threshold: float,
    labels: tuple[str, ...] | None,
) -> list[Detection]:
    """Detections at or above `threshold`, boxes in original image pixels; `arrays` are
    the model's outputs in metadata order."""
    if kind == "ssd":
        return _ssd(arrays, geometry, threshold, labels)
    if kind == "end2end":
        rows = arrays[0].reshape(-1, arrays[0].shape[-1])
        rows = rows[rows[:, 4] >= threshold]
        return _detections(_unletterbox(rows[:, :4], geometry), rows[:, 4], rows[:, 5].astype(int), labels)
    if kind == "darknet":
        rows = np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrays])
        size = np.array([geometry.input_width, geometry.input_height] * 2, dtype=np.float32)
        centers, scores = rows[:, :4] * size, rows[:, 5:]
    else:
        out = arrays[0]
        out = out.reshape(out.shape[-2:]) if out.ndim == 3 else out
        if out.shape[0] < out.shape[1]:
            out = out.T
        centers = out[:, :4]
        scores = out[:, 5:] * out[:, 4:5] if kind == "yolov5" else out[:, 4:]
    if scores.shape[1] == 0 or len(scores) == 0:
        return []
    classes = scores.argmax(axis=1)
    confidences = scores[np.arange(len(classes)), classes]
    candidate = min(CANDIDATE_THRESHOLD, threshold)
    keep = confidences >= candidate
    centers, confidences, classes = centers[keep], confidences[keep], classes[keep]
    half_w, half_h = centers[:, 2] / 2, centers[:, 3] / 2
    xyxy = np.stack([centers[:, 0] - half_w, centers[:, 1] - half_h,
                     centers[:, 0] + half_w, centers[:, 1] + half_h], axis=1)
    xyxy = _unletterbox(xyxy, geometry)
    chosen = _nms(xyxy, confidences, candidate)
    xyxy, confidences, classes = xyxy[chosen], confidences[chosen], classes[chosen]
    keep = confidences >= threshold
    return _detections(xyxy[keep], confidences[keep], classes[keep], labels)


def _ssd(arrays: list[np.ndarray], geometry: Geometry, threshold: float,
         labels: tuple[str, ...] | None) -> list[Detection]:
    boxes = next(a for a in arrays if a.ndim == 3 and a.shape[-1] == 4).reshape(-1, 4)
    count_array = next((a for a in arrays if a.size == 1), None)
    per_box = [a.reshape(-1) for a in arrays if a.ndim == 2 and a.shape[-1] == len(boxes)]
    if len(per_box) != 2:
        raise NoDecoder("SSD outputs need boxes, classes, scores and a count")
    # The usual order is classes then scores; class ids are whole numbers, scores are not.
    classes, scores = per_box
    if np.any(classes != np.round(classes)) and np.all(scores == np.round(scores)):
        classes, scores = scores, classes
    count = int(count_array.reshape(-1)[0]) if count_array is not None else len(boxes)
    boxes, classes, scores = boxes[:count], classes[:count], scores[:count]
    keep = scores >= threshold
    boxes, classes, scores = boxes[keep], classes[keep], scores[keep]
    size = np.array([geometry.input_height, geometry.input_width] * 2, dtype=np.float32)
    yxyx = boxes * size
    xyxy = _unletterbox(yxyx[:, [1, 0, 3, 2]], geometry)
    return _detections(xyxy, scores, classes.astype(int), labels)


def _unletterbox(xyxy: np.ndarray, g: Geometry) -> np.ndarray:
    out = np.empty_like(xyxy, dtype=np.float64)
    out[:, [0, 2]] = (xyxy[:, [0, 2]] - g.pad_x) / g.scale_x
    out[:, [1, 3]] = (xyxy[:, [1, 3]] - g.pad_y) / g.scale_y
    return out


def _nms(xyxy: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by OpenCV's class-agnostic NMS (the one pyzm uses), best first."""
    if len(xyxy) == 0:
        return np.zeros(0, dtype=int)
    import cv2

    rects = np.stack([xyxy[:, 0], xyxy[:, 1], xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], axis=1)
    kept = cv2.dnn.NMSBoxes(rects.tolist(), scores.astype(float).tolist(), threshold, NMS_THRESHOLD)
    return np.asarray(kept, dtype=int).reshape(-1)


def _detections(xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                labels: tuple[str, ...] | None) -> list[Detection]:
    out = []
    for (x1, y1, x2, y2), score, cls in zip(xyxy.tolist(), scores.tolist(), classes.tolist()):
        label = labels[cls] if labels and 0 <= cls < len(labels) else str(cls)
        out.append(Detection(label, float(score), (round(x1), round(y1), round(x2), round(y2))))
    return out
