"""A backend for `.npy` files holding a weight matrix W: the model computes y = x @ W."""

import numpy as np

import kernel


class NpySession(kernel.Session):
    def __init__(self, weights: np.ndarray) -> None:
        self.weights = weights.astype(np.float32)
        self.inputs = [kernel.TensorInfo(name="x", datatype="FP32", shape=(-1, weights.shape[0]))]
        self.outputs = [kernel.TensorInfo(name="y", datatype="FP32", shape=(-1, weights.shape[1]))]
        self.memory_bytes = self.weights.nbytes

    def run(self, inputs: dict) -> dict:
        return {"y": inputs["x"] @ self.weights}


class NpyBackend(kernel.Backend):
    formats = frozenset({"npy"})

    def load(self, spec: kernel.ModelSpec) -> NpySession:
        weights = np.load(spec.path, allow_pickle=False)
        if weights.ndim != 2:
            raise ValueError(f"{spec.path}: expected a 2-D weight matrix, got shape {weights.shape}")
        return NpySession(weights)
