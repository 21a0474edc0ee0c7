"""The `coral` backend: TFLite models on the CPU or a Coral Edge TPU."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Annotated

import msgspec

from kernel import Backend, Kernel, ModelSpec, OptionGroup, hookimpl
from kernel_coral.flatbuffer import EDGETPU_OP, NotTFLite, custom_ops
from kernel_coral.runtime import NoEdgeTPU, cpu_interpreter, tpu_interpreter
from kernel_coral.session import TFLiteSession

log = logging.getLogger("kernel.coral")

Threads = Annotated[int, msgspec.Meta(ge=1)]


class CoralConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The `[coral]` config section."""

    #: CPU threads per interpreter; None lets the runtime choose. A model's `threads` wins.
    threads: Threads | None = None
    #: The Edge TPU delegate library.
    delegate: str = "libedgetpu.so.1"
    #: Which Edge TPU when several are attached (`usb`, `usb:0`, `pci:0`); None: any.
    device: str | None = None


class CoralBackend(Backend):
    formats = frozenset({"tflite"})
    processors = frozenset({"cpu", "tpu"})
    #: TFLite is this backend's own format: prefer it to backends that merely read it.
    priority = 10

    def __init__(self) -> None:
        self.config = CoralConfig()

    @hookimpl
    def kernel_add_options(self, group: OptionGroup) -> None:
        group.add_option("--coral-threads", type=int, help="CPU threads per TFLite interpreter")
        group.add_option("--coral-delegate", help="Edge TPU delegate library (default libedgetpu.so.1)")
        group.add_option("--coral-device", help="Edge TPU to use when several are attached (usb:0, pci:0)")

    @hookimpl
    def kernel_config_section(self) -> type[CoralConfig]:
        return CoralConfig

    @hookimpl
    def kernel_startup(self, kernel: Kernel) -> None:
        self.config = kernel.config.section(self.name)

    def load(self, spec: ModelSpec) -> TFLiteSession:
        """Load on the Edge TPU when the model asks for `tpu` or is compiled for it; a
        compiled model cannot run anywhere else, a plain one falls back to the CPU."""
        path = Path(spec.path)
        try:
            needs_tpu = EDGETPU_OP in custom_ops(path.read_bytes())
        except NotTFLite as exc:
            raise ValueError(f"model {spec.qualified}: {path} is not a TFLite model: {exc}") from None
        threads = _threads(spec, self.config.threads)
        build = functools.partial(cpu_interpreter, str(path), threads)
        interpreter = None
        if spec.processor == "tpu" or needs_tpu:
            on_tpu = functools.partial(tpu_interpreter, str(path), threads, self.config.delegate, self.config.device)
            try:
                interpreter = on_tpu()
                build = on_tpu
            except NoEdgeTPU as exc:
                if needs_tpu:
                    raise RuntimeError(
                        f"model {spec.qualified} is compiled for the Edge TPU "
                        f"({EDGETPU_OP}) and requires an Edge TPU: {exc}"
                    ) from None
                log.warning("model %s: no Edge TPU (%s); running it on the CPU", spec.qualified, exc)
        elif spec.processor != "cpu":
            log.warning("model %s: processor %r is not supported; running it on the CPU",
                        spec.qualified, spec.processor)
        if interpreter is None:
            interpreter = build()
        try:
            return TFLiteSession(interpreter, build, memory_bytes=path.stat().st_size)
        except (ValueError, RuntimeError) as exc:
            raise RuntimeError(f"model {spec.qualified} cannot be prepared: {exc}") from None


def _threads(spec: ModelSpec, default: int | None) -> int | None:
    """The model's `threads` param, else the backend's."""
    if "threads" not in spec.params:
        return default
    try:
        return msgspec.convert(spec.params["threads"], Threads)
    except msgspec.ValidationError as exc:
        raise ValueError(f"model {spec.qualified}: threads must be a whole number >= 1 ({exc})") from None
