"""A loaded TFLite model as a kernel `Session`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from kernel import InvalidInput, ModelError, Session, TensorInfo, datatype_name

#: TFLite's error reporter keeps every message it has reported and repeats them all in each
#: new error; past this many characters the session builds its interpreter anew.
MAX_ERROR_TEXT = 1 << 16


class TFLiteSession(Session):
    """Runs one TFLite interpreter.

    An interpreter holds its tensors in one arena and is not thread-safe, so `run` holds a
    lock from writing the inputs to reading the outputs. Inputs are passed in the model's
    own dtype: a quantized model takes and returns its uint8/int8 values, and `scale` and
    `zero_point` in the metadata say how to convert them. `rebuild` makes another interpreter
    like `interpreter`.
    """

    def __init__(self, interpreter: Any, rebuild: Callable[[], Any], memory_bytes: int) -> None:
        self._rebuild = rebuild
        interpreter.allocate_tensors()
        in_details = interpreter.get_input_details()
        out_details = interpreter.get_output_details()
        self.inputs = [_info(d) for d in in_details]
        self.outputs = [_info(d) for d in out_details]
        self.memory_bytes = memory_bytes
        self._interpreter: Any = interpreter
        self._lock = threading.Lock()
        self._input_index = {d["name"]: int(d["index"]) for d in in_details}
        self._output_index = {d["name"]: int(d["index"]) for d in out_details}
        #: The shape each input tensor is allocated with now; dynamic inputs change it.
        self._allocated = {d["name"]: tuple(int(n) for n in d["shape"]) for d in in_details}
        #: The error text the interpreter has reported so far.
        self._reported = ""

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            interpreter = self._interpreter
            if interpreter is None:
                raise RuntimeError("the model was unloaded, or its interpreter could not be built again")
            resized = False
            try:
                for name, array in inputs.items():
                    if array.shape != self._allocated[name]:
                        interpreter.resize_tensor_input(self._input_index[name], array.shape, strict=True)
                        self._allocated[name] = array.shape
                        resized = True
                if resized:
                    interpreter.allocate_tensors()
            except (RuntimeError, ValueError) as exc:
                # The arena is left unallocated: the next call allocates again, whatever its shapes.
                self._allocated = dict.fromkeys(self._allocated, ())
                raise InvalidInput(f"the model cannot run inputs of these shapes: {self._news(exc)}") from None
            for name, array in inputs.items():
                interpreter.set_tensor(self._input_index[name], np.ascontiguousarray(array))
            try:
                interpreter.invoke()
            except (RuntimeError, ValueError) as exc:
                raise ModelError(f"the TFLite runtime failed to run the model: {self._news(exc)}") from None
            # get_tensor copies, so the results survive the next call.
            return {name: interpreter.get_tensor(index) for name, index in self._output_index.items()}

    def _news(self, exc: Exception) -> str:
        """What an interpreter error adds to those it reported before (called holding the
        lock); a fresh interpreter once their text grows past MAX_ERROR_TEXT."""
        text = str(exc)
        news = text.removeprefix(self._reported)
        self._reported = text
        if len(text) > MAX_ERROR_TEXT:
            self._interpreter = None  # frees the arena and, on a TPU, the device first
            self._interpreter = self._rebuild()
            self._allocated = dict.fromkeys(self._allocated, ())  # allocated on the next call
            self._reported = ""
        return news

    def close(self) -> None:
        with self._lock:
            # Dropping the interpreter frees its arena and, on a TPU, the device.
            self._interpreter = None


def _info(detail: Mapping[str, Any]) -> TensorInfo:
    name = detail["name"]
    try:
        datatype = datatype_name(detail["dtype"])
    except ValueError as exc:
        raise ValueError(f"tensor {name!r}: {exc}") from None
    signature = detail.get("shape_signature")
    shape = signature if signature is not None and len(signature) else detail["shape"]
    scale, zero_point = _per_tensor_quantization(detail)
    return TensorInfo(
        name=name,
        datatype=datatype,
        shape=tuple(int(n) for n in shape),
        scale=scale,
        zero_point=zero_point,
    )


def _per_tensor_quantization(detail: Mapping[str, Any]) -> tuple[float | None, int | None]:
    """(scale, zero_point) for a tensor quantized per tensor, else (None, None).

    An unquantized tensor has no scales; a per-channel one (mostly weights) has one per
    slice and so no single pair to report.
    """
    params = detail["quantization_parameters"]
    if len(params["scales"]) != 1:
        return None, None
    return float(params["scales"][0]), int(params["zero_points"][0])
