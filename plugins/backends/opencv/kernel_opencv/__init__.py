"""The OpenCV inference backend: ONNX and Darknet models through `cv2.dnn`."""

from kernel_opencv.backend import OpenCVBackend

__all__ = ["OpenCVBackend"]
