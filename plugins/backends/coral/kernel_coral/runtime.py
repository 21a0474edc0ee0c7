"""Building TFLite interpreters, on the CPU or with the Edge TPU delegate.

The runtimes are imported here, on first load, so that `kernel serve` starts without
paying for them. `ai-edge-litert` is the maintained runtime; `tflite-runtime` is what
Coral's own packages are built against, so either is accepted. Coral's `pycoral`
(detected by its `pycoral.utils.edgetpu` module: an unrelated project on PyPI shares the
name) builds Edge TPU interpreters its own way when it is installed.
"""

from __future__ import annotations

import ctypes
import importlib
from types import ModuleType
from typing import Any

RUNTIMES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


class NoEdgeTPU(RuntimeError):
    """The Edge TPU delegate could not be loaded; the message says why."""


def interpreter_module() -> ModuleType:
    """The first TFLite runtime that imports."""
    errors = []
    for name in RUNTIMES:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise RuntimeError(
        "no TFLite runtime is installed (pip install ai-edge-litert): " + "; ".join(errors)
    )


def pycoral_edgetpu() -> ModuleType | None:
    try:
        return importlib.import_module("pycoral.utils.edgetpu")
    except ImportError:
        return None


def cpu_interpreter(path: str, threads: int | None) -> Any:
    return interpreter_module().Interpreter(model_path=path, num_threads=threads)


def tpu_interpreter(path: str, threads: int | None, library: str, device: str | None) -> Any:
    """An interpreter whose graph runs on the Edge TPU; `NoEdgeTPU` when there is none."""
    edgetpu = pycoral_edgetpu()
    if edgetpu is not None:
        try:
            # No thread count here: pycoral builds the interpreter, the TPU does the work.
            return edgetpu.make_interpreter(path, device=device)
        except (ValueError, RuntimeError, OSError) as exc:
            raise NoEdgeTPU(f"pycoral found no Edge TPU: {exc}") from exc
    try:
        # Probing with ctypes first: a failed load_delegate leaves a half-built Delegate
        # whose finalizer prints a traceback.
        ctypes.CDLL(library)
    except OSError as exc:
        raise NoEdgeTPU(f"the Edge TPU library cannot be loaded: {exc}") from exc
    runtime = interpreter_module()
    try:
        delegate = runtime.load_delegate(library, {"device": device} if device else {})
    except (ValueError, RuntimeError, OSError) as exc:
        raise NoEdgeTPU(f"the Edge TPU delegate ({library}) failed: {exc}") from exc
    return runtime.Interpreter(
        model_path=path, experimental_delegates=[delegate], num_threads=threads
    )
