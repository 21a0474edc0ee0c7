"""The `onnxruntime` backend: options, config and loading models into sessions.

onnxruntime is imported on the first load, never at startup, so `kernel serve` starts
fast whether or not any ONNX model is used.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import msgspec

from kernel import Backend, ModelError, ModelSpec, OptionGroup, hookimpl
from kernel_onnxruntime.darknet_cache import darknet_onnx
from kernel_onnxruntime.session import OnnxRuntimeSession

log = logging.getLogger("kernel.onnxruntime")

CPU = "CPUExecutionProvider"
CUDA, TENSORRT = "CUDAExecutionProvider", "TensorrtExecutionProvider"


class OnnxRuntimeConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The `[onnxruntime]` config section."""

    #: Threads inside one operator; 0 lets onnxruntime choose (one per core).
    intra_op_threads: int = 0
    #: Threads running independent operators at once; 0 lets onnxruntime choose.
    inter_op_threads: int = 0
    #: Where converted Darknet models are kept; default `<state_dir>/onnxruntime/darknet`.
    cache_dir: str | None = None
    #: Let idle worker threads spin waiting for work (onnxruntime's default). Off, they
    #: sleep: a little more latency per call, but no CPU taken from the HTTP server and
    #: from concurrent inferences on machines with few cores.
    spinning: bool = True
    #: Keep spinning after the last concurrent run returns, waiting for the next one
    #: (onnxruntime's default). Off, they stop there: runs are as fast (threads still spin
    #: within a run), and the CPU goes to the work between runs (decoding the next image,
    #: HTTP, other processes) rather than to waiting: about 35 ms of a core after each run
    #: of a YOLOv8n on 2 cores.
    spin_between_runs: bool = False

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("thread counts must be >= 0")


class ModelParams(msgspec.Struct, kw_only=True):
    """What a model's config.toml may set for this backend (other keys are other plugins')."""

    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    #: Run on the CPU, with a warning, when a gpu is asked for but none can be used.
    allow_cpu_fallback: bool = False
    #: Prefer TensorRT over CUDA on a gpu (engine builds make the first load slow).
    tensorrt: bool = False


def model_params(spec: ModelSpec) -> ModelParams:
    fields = set(ModelParams.__struct_fields__)
    try:
        return msgspec.convert({k: v for k, v in spec.params.items() if k in fields}, ModelParams)
    except msgspec.ValidationError as exc:
        raise ModelError(f"model {spec.qualified!r}: bad config value: {exc}") from None


class OnnxRuntimeBackend(Backend):
    """Runs ONNX models, and Darknet models after converting them to ONNX."""

    formats = frozenset({"onnx", "darknet"})
    processors = frozenset({"cpu", "gpu"})
    priority = 20

    def __init__(self) -> None:
        self.config = OnnxRuntimeConfig()
        #: None until startup: Darknet models are then converted in memory, uncached.
        self.cache_dir: Path | None = None

    @hookimpl
    def kernel_add_options(self, group: OptionGroup) -> None:
        group.add_option(f"--{self.name}-intra-op-threads", type=int,
                         help="threads inside one operator (0: one per core)")
        group.add_option(f"--{self.name}-inter-op-threads", type=int,
                         help="threads running independent operators at once (0: runtime's choice)")
        group.add_option(f"--{self.name}-cache-dir",
                         help="where Darknet models converted to ONNX are cached")
        group.add_option(f"--{self.name}-spinning", action=argparse.BooleanOptionalAction,
                         help="let idle runtime threads spin (default: on; off frees CPU on small machines)")
        group.add_option(f"--{self.name}-spin-between-runs", action=argparse.BooleanOptionalAction,
                         help="keep runtime threads spinning after a run returns (default: off)")

    @hookimpl
    def kernel_config_section(self) -> type:
        return OnnxRuntimeConfig

    @hookimpl
    def kernel_startup(self, kernel: Any) -> None:
        self.config = kernel.config.section(self.name)
        default = Path(kernel.config.kernel.state_dir) / self.name / "darknet"
        self.cache_dir = Path(self.config.cache_dir or default).expanduser()

    def load(self, spec: ModelSpec) -> OnnxRuntimeSession:
        import onnxruntime as ort

        params = model_params(spec)
        if spec.format == "darknet":
            if "cfg" not in spec.files:
                raise ModelError(f"model {spec.qualified!r}: a Darknet model needs its .cfg file")
            model: str | bytes = darknet_onnx(Path(spec.path), Path(spec.files["cfg"]), self.cache_dir)
        else:
            model = spec.path
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not self.config.spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        elif not self.config.spin_between_runs:
            options.add_session_config_entry("session.force_spinning_stop", "1")
        options.intra_op_num_threads = _pick(params.intra_op_threads, self.config.intra_op_threads)
        inter = _pick(params.inter_op_threads, self.config.inter_op_threads)
        options.inter_op_num_threads = inter
        if inter > 1:
            # Inter-op threads only run anything in parallel execution mode.
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        providers = self._providers(spec, params, ort.get_available_providers())
        try:
            session = ort.InferenceSession(model, sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime's errors share no useful base class
            raise ModelError(f"onnxruntime cannot load {spec.path}: {exc}") from exc
        loaded = OnnxRuntimeSession(session, Path(spec.path).stat().st_size)
        if providers[0] != CPU and loaded.providers[0] == CPU:
            # The gpu provider is installed but could not start (driver, libraries).
            self._no_gpu(spec, params, f"{providers[0]} failed to start")
        return loaded

    def _providers(self, spec: ModelSpec, params: ModelParams, available: list[str]) -> list[str]:
        if spec.processor == "cpu":
            return [CPU]
        if spec.processor == "gpu":
            order = (TENSORRT, CUDA) if params.tensorrt else (CUDA, TENSORRT)
            gpu = [p for p in order if p in available]
            if gpu:
                return [*gpu, CPU]
            self._no_gpu(spec, params, f"this onnxruntime has no CUDA or TensorRT provider "
                                       f"(it has {', '.join(available)}; install onnxruntime-gpu)")
        else:
            self._no_gpu(spec, params, f"onnxruntime cannot use a {spec.processor}")
        return [CPU]

    @staticmethod
    def _no_gpu(spec: ModelSpec, params: ModelParams, why: str) -> None:
        """Fall back to the CPU with a warning when the model allows it, else refuse."""
        if not params.allow_cpu_fallback:
            raise ModelError(
                f"model {spec.qualified!r} asks for a {spec.processor}, but {why}; "
                "set allow_cpu_fallback = true in its config to run it on the CPU instead"
            )
        log.warning("model %s asks for a %s, but %s; running it on the CPU", spec.qualified, spec.processor, why)


def _pick(per_model: int | None, default: int) -> int:
    return default if per_model is None else per_model
