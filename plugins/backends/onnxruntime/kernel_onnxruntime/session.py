"""A loaded onnxruntime model as a kernel `Session`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from kernel import InvalidInput, ModelError, Session, TensorInfo

#: onnxruntime's tensor type names -> Open Inference Protocol datatypes.
ORT_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def tensor_info(arg: Any) -> TensorInfo:
    """TensorInfo of an onnxruntime NodeArg; symbolic or unknown dimensions become -1.

    onnxruntime does not expose quantization parameters, so scale and zero point stay None.
    """
    datatype = ORT_DATATYPES.get(arg.type)
    if datatype is None:
        raise ModelError(f"tensor {arg.name!r} has type {arg.type}, which the kernel cannot serve")
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape)
    return TensorInfo(name=arg.name, datatype=datatype, shape=shape)


class OnnxRuntimeSession(Session):
    def __init__(self, session: Any, memory_bytes: int) -> None:
        self._session = session
        self.inputs = [tensor_info(arg) for arg in session.get_inputs()]
        self.outputs = [tensor_info(arg) for arg in session.get_outputs()]
        self._output_names = [info.name for info in self.outputs]
        self.memory_bytes = memory_bytes
        # A failed run comes back as an exception, which the server reports through its log;
        # onnxruntime would also print it to stderr, unformatted and in colour.
        import onnxruntime

        self._run_options = onnxruntime.RunOptions()
        self._run_options.log_severity_level = 4  # fatal only

    @property
    def providers(self) -> list[str]:
        """The execution providers the runtime actually uses, best first."""
        return list(self._session.get_providers())

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Every kind of BYTES array: fixed-width `S` ones too, which onnxruntime would read
        # as NUL-terminated strings past their ends.
        feed = {name: _to_strings(name, value) if value.dtype.kind in "OSU" else value
                for name, value in inputs.items()}
        # onnxruntime's run is thread-safe, so no lock.
        try:
            values = self._session.run(self._output_names, feed, self._run_options)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors share no useful base class
            message = _RUNTIME_PREFIX.sub("", str(exc)).strip()
            if type(exc).__name__ == "InvalidArgument":  # inputs the graph cannot take (a shape too small)
                raise InvalidInput(f"the model cannot run these inputs: {message}") from None
            raise ModelError(f"onnxruntime failed to run the model: {message}") from None
        return {name: _to_bytes(value) if value.dtype.kind in "OU" else value
                for name, value in zip(self._output_names, values)}

    def close(self) -> None:
        del self._session


#: What onnxruntime puts before its messages: `[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : `.
_RUNTIME_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")


def _to_strings(name: str, array: np.ndarray) -> np.ndarray:
    """BYTES tensors arrive as `bytes`; onnxruntime string tensors take `str` (it would
    turn a `bytes` object into its repr)."""
    try:
        return np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else str(b), otypes=[object])(array)
    except UnicodeDecodeError:
        raise InvalidInput(f"input {name!r}: onnxruntime string tensors must be UTF-8") from None


def _to_bytes(array: np.ndarray) -> np.ndarray:
    """String outputs as BYTES tensors: `bytes` elements, like every other backend's."""
    return np.vectorize(lambda s: s.encode() if isinstance(s, str) else s, otypes=[object])(array)
