"""The inference backend contract.

A backend is a separately installed distribution that registers a `Backend` subclass in
the `kernel.backends` entry-point group. The kernel instantiates every installed backend,
registers the instance with the plugin manager (so it may implement hooks such as
`kernel_add_options`), and the model registry asks each one whether it can load a model.

Tensors are NumPy arrays named as the model names them; datatypes are the Open Inference
Protocol's names (`FP32`, `UINT8`, ...), shapes use -1 for dynamic dimensions.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from kernel.errors import BadRequest

if TYPE_CHECKING:
    from kernel.registry import ModelSpec

#: OIP datatype name -> NumPy dtype. BYTES tensors are object arrays of `bytes`.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_NAMES = {dtype: name for name, dtype in DATATYPES.items()}

PROCESSORS = ("cpu", "gpu", "tpu")


def datatype_name(dtype: np.dtype | type) -> str:
    """The OIP datatype name of a NumPy dtype; `BYTES` for strings and objects."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _NAMES[dtype]
    except KeyError:
        raise ValueError(f"no Open Inference Protocol datatype for {dtype}") from None


class InvalidInput(BadRequest, ValueError):
    """Inputs that do not match the model's metadata; plugins answer it with a 400."""


class TensorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One input or output of a loaded model."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    #: Affine quantization (real = scale * (q - zero_point)) where the model declares it.
    scale: float | None = None
    zero_point: int | None = None

    @property
    def dtype(self) -> np.dtype:
        return DATATYPES[self.datatype]

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        """True when `shape` fits this tensor's shape, -1 matching any size."""
        return len(shape) == len(self.shape) and all(
            want < 0 or want == got for want, got in zip(self.shape, shape)
        )


def validate_inputs(
    infos: Iterable[TensorInfo], inputs: Mapping[str, np.ndarray]
) -> None:
    """Raise `InvalidInput` naming the tensor unless `inputs` match `infos` exactly."""
    expected = {info.name: info for info in infos}
    unknown = sorted(set(inputs) - set(expected))
    if unknown:
        raise InvalidInput(
            f"unknown input {', '.join(map(repr, unknown))}; the model takes {sorted(expected)}"
        )
    missing = sorted(set(expected) - set(inputs))
    if missing:
        raise InvalidInput(f"missing input {', '.join(map(repr, missing))}")
    for name, array in inputs.items():
        info = expected[name]
        try:
            got = datatype_name(array.dtype)
        except ValueError:  # complex, big-endian, ...: nothing a model takes
            raise InvalidInput(f"input {name!r}: expected datatype {info.datatype}, got {array.dtype}") from None
        if got != info.datatype:
            raise InvalidInput(f"input {name!r}: expected datatype {info.datatype}, got {got}")
        if not info.accepts_shape(array.shape):
            raise InvalidInput(
                f"input {name!r}: expected shape {list(info.shape)}, got {list(array.shape)}"
            )


class Session(abc.ABC):
    """A model loaded by a backend, ready to run.

    Subclasses set `inputs`, `outputs` and `memory_bytes` when they load, and implement
    `run`. Callers use `infer`, which checks the inputs against the metadata first so that
    a wrong name, datatype or shape is an `InvalidInput`, never a crash in native code.
    `infer` may be called from several threads at once; a runtime that is not thread-safe
    must lock inside `run`.
    """

    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    #: An estimate of the memory this loaded model holds, for the registry's budget.
    memory_bytes: int = 0

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        validate_inputs(self.inputs, inputs)
        return self.run(inputs)

    @abc.abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on validated inputs; return every output by name."""

    def close(self) -> None:
        """Free what the session holds. The registry calls it once, on unload or eviction."""


class Backend(abc.ABC):
    """A way to run models: one per installed `kernel.backends` entry point.

    `name` is set by the kernel from the entry point. A backend declares the model
    formats it reads (`onnx`, `darknet`, `tflite`, ...) and the processors it can use;
    `priority` breaks ties when several backends can load a model (higher wins), and
    `preference(spec)` lets a backend rank itself per model (a native reader of one
    format over a converter), defaulting to `priority`.
    """

    name: str = ""
    formats: frozenset[str] = frozenset()
    processors: frozenset[str] = frozenset({"cpu"})
    priority: int = 0

    def unsupported(self, spec: ModelSpec) -> str | None:
        """Why this backend cannot load `spec`, or None when it can."""
        if spec.format not in self.formats:
            return f"reads {', '.join(sorted(self.formats))}, not {spec.format}"
        return None

    def preference(self, spec: ModelSpec) -> int:
        """How much this backend wants to run `spec` (higher wins); `priority` by default."""
        return self.priority

    @abc.abstractmethod
    def load(self, spec: ModelSpec) -> Session:
        """Load `spec` and return a ready session; raise an exception with a clear message
        (the registry shows it as the model's error) when the model cannot be loaded."""


class BackendChoice(msgspec.Struct, frozen=True):
    """Which backend runs a model and why, as `kernel models` and `/-/models` show it."""

    backend: str | None
    reason: str


def choose_backend(spec: ModelSpec, backends: Mapping[str, Backend]) -> BackendChoice:
    """Pick the backend for `spec`, explaining the choice.

    A backend named in the model's config wins (or the model has none when that backend is
    not installed or cannot read it). Otherwise, among the backends that can load the
    format, those that can use the requested processor come first, then higher
    `preference(spec)`, then the name, so the choice never depends on installation order.
    """
    if spec.backend:
        forced = backends.get(spec.backend)
        if forced is None:
            return BackendChoice(
                None, f"configured backend {spec.backend!r} is not installed"
            )
        why_not = forced.unsupported(spec)
        if why_not:
            return BackendChoice(None, f"configured backend {spec.backend!r} {why_not}")
        return BackendChoice(forced.name, "configured in the model's config")
    able = [b for b in backends.values() if b.unsupported(spec) is None]
    if not able:
        installed = ", ".join(sorted(backends)) or "none"
        return BackendChoice(
            None, f"no backend for {spec.format} models (installed backends: {installed})"
        )
    able.sort(key=lambda b: (spec.processor not in b.processors, -b.preference(spec), b.name))
    best = able[0]
    reason = f"reads {spec.format}"
    if spec.processor in best.processors:
        reason += f" on {spec.processor}"
    if len(able) > 1:
        others = ", ".join(b.name for b in able[1:])
        reason += f"; preferred over {others} (priority {best.preference(spec)})"
    return BackendChoice(best.name, reason)
