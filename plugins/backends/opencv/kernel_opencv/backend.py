"""The `opencv` backend: ONNX and Darknet models through `cv2.dnn`.

cv2 is imported on the first load, never at startup. Darknet needs OpenCV 4 (OpenCV 5
removed the reader), which is why this distribution pins `opencv-python-headless<5`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from kernel import Backend, ModelError, ModelSpec, TensorInfo
from kernel_opencv.metadata import darknet_input_shape, onnx_tensors
from kernel_opencv.session import OpenCVSession, cv_message

log = logging.getLogger("kernel.opencv")

#: The name the kernel gives a Darknet net's one input (OpenCV leaves it unnamed).
DARKNET_INPUT = "images"


class OpenCVBackend(Backend):
    """Reads ONNX after onnxruntime (priority 10 < 20) and Darknet before it (natively)."""

    formats = frozenset({"onnx", "darknet"})
    processors = frozenset({"cpu", "gpu"})
    priority = 10
    #: Above the onnxruntime backend's 20: a native reader beats a conversion.
    darknet_preference = 30

    def preference(self, spec: ModelSpec) -> int:
        return self.darknet_preference if spec.format == "darknet" else self.priority

    def load(self, spec: ModelSpec) -> OpenCVSession:
        import cv2

        where = f"model {spec.qualified!r}"
        if spec.format == "darknet" and "cfg" not in spec.files:
            raise ModelError(f"{where}: a Darknet model needs its .cfg file")
        if spec.format == "darknet" and not hasattr(cv2.dnn, "readNetFromDarknet"):
            raise ModelError(
                f"{where}: OpenCV {cv2.__version__} has no Darknet reader (removed in OpenCV 5); "
                "install opencv-python-headless<5 or let the onnxruntime backend convert it"
            )
        try:
            if spec.format == "darknet":
                net = cv2.dnn.readNetFromDarknet(spec.files["cfg"], spec.path)
            else:
                net = cv2.dnn.readNetFromONNX(spec.path)
        except cv2.error as exc:
            raise ModelError(f"{where}: OpenCV cannot read {spec.path}: {cv_message(exc)}") from None
        self._place(net, spec, cv2)
        memory = Path(spec.path).stat().st_size
        if spec.format == "onnx":
            inputs, outputs = onnx_tensors(spec.path)
            return OpenCVSession(spec.qualified, net, inputs, outputs, memory)
        shape = darknet_input_shape(spec.files["cfg"])
        inputs = [TensorInfo(name=DARKNET_INPUT, datatype="FP32", shape=shape)]
        names = list(net.getUnconnectedOutLayersNames())
        # The output shapes follow from the cfg; one run on zeros gives them, and warms up.
        # Until then they are unknown (), which leaves the probe's outputs as OpenCV shapes them.
        outputs = [TensorInfo(name=name, datatype="FP32", shape=()) for name in names]
        session = OpenCVSession(spec.qualified, net, inputs, outputs, memory, unnamed_input=True)
        probe = session.run({DARKNET_INPUT: np.zeros(shape, np.float32)})
        session.outputs = [
            TensorInfo(name=name, datatype="FP32", shape=probe[name].shape) for name in names
        ]
        return session

    @staticmethod
    def _place(net: Any, spec: ModelSpec, cv2: Any) -> None:
        """CUDA when a gpu is asked for and OpenCV has one; otherwise the CPU."""
        if spec.processor == "gpu" and cv2.cuda.getCudaEnabledDeviceCount() > 0:
            net.setPreferableBackend(cv2.dnn.DNN_BACKEND_CUDA)
            net.setPreferableTarget(cv2.dnn.DNN_TARGET_CUDA)
            return
        if spec.processor != "cpu":
            why = ("this OpenCV has no CUDA device (pip's opencv builds have no CUDA)"
                   if spec.processor == "gpu" else f"OpenCV cannot use a {spec.processor}")
            if spec.params.get("allow_cpu_fallback") is not True:
                raise ModelError(
                    f"model {spec.qualified!r} asks for a {spec.processor}, but {why}; "
                    "set allow_cpu_fallback = true in its config to run it on the CPU instead"
                )
            log.warning("model %s asks for a %s, but %s; running it on the CPU",
                        spec.qualified, spec.processor, why)
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
