"""A loaded `cv2.dnn` network as a kernel `Session`."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from kernel import InvalidInput, ModelError, Session, TensorInfo


def cv_message(exc: Exception) -> str:
    """The useful line of a cv2.error (its text also holds a source path and a banner)."""
    return str(getattr(exc, "err", None) or exc).strip()


class OpenCVSession(Session):
    def __init__(self, name: str, net: Any, inputs: list[TensorInfo], outputs: list[TensorInfo],
                 memory_bytes: int, *, unnamed_input: bool = False) -> None:
        self._name = name
        self._net = net
        self.inputs = inputs
        self.outputs = outputs
        self.memory_bytes = memory_bytes
        #: Darknet nets have one input without a name; the kernel calls it `images`.
        self._unnamed_input = unnamed_input
        self._output_names = [info.name for info in outputs]
        # A cv2.dnn net keeps its inputs and outputs in itself: one call at a time.
        self._lock = threading.Lock()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import cv2

        empty = [name for name, array in inputs.items() if array.size == 0]
        if empty:  # cv2.dnn would run on memory it never wrote
            raise InvalidInput(f"input {empty[0]!r} has no elements; OpenCV cannot run an empty tensor")
        with self._lock:
            try:
                for name, array in inputs.items():
                    self._net.setInput(array, "" if self._unnamed_input else name)
                values = self._net.forward(self._output_names)
            except cv2.error as exc:
                raise ModelError(f"model {self._name!r}: OpenCV failed to run it: {cv_message(exc)}") from None
        return {
            info.name: _declared_rank(np.asarray(value, dtype=info.dtype), info.shape)
            for info, value in zip(self.outputs, values)
        }

    def close(self) -> None:
        del self._net


def _declared_rank(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`value` in the rank the model declares (cv2.dnn keeps at least two dimensions, so a
    declared [2] comes back [2, 1]), where the declared shape says how; `shape` () is not
    known yet."""
    if not shape or value.ndim == len(shape) or list(shape).count(-1) > 1:
        return value
    try:
        return value.reshape(shape)
    except ValueError:
        return value
