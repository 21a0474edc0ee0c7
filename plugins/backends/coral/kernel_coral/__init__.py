"""kernel-coral: the kernel's TFLite backend, on the CPU or a Coral Edge TPU."""

from kernel_coral.backend import CoralBackend, CoralConfig

__all__ = ["CoralBackend", "CoralConfig"]
