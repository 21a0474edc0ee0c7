"""The onnxruntime inference backend: ONNX models, and Darknet models converted to ONNX."""

from kernel_onnxruntime.backend import OnnxRuntimeBackend, OnnxRuntimeConfig

__all__ = ["OnnxRuntimeBackend", "OnnxRuntimeConfig"]
