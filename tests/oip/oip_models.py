"""Small ONNX models built with onnx.helper for the OIP tests, in a `--model-dir` layout."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from kernel import DATATYPES

#: Every OIP datatype the kinds model passes through, with its ONNX element type.
KINDS = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def affine(path: Path, scale: float, offset: float, batch: int | str = "batch") -> Path:
    """x FP32 [-1, 4] -> y = x * scale + offset, and total = sum of each row [-1, 1]
    (`batch` rows, where it is a number, instead of any)."""
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset"], ["y"]),
        helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes, "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4]),
         helper.make_tensor_value_info("total", TensorProto.FLOAT, [batch, 1])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
         helper.make_tensor("offset", TensorProto.FLOAT, [], [offset]),
         helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    return _save(graph, path)


def pooled(path: Path) -> Path:
    """x FP32 [-1, 4] -> total, the sum of every element: an output without a batch dimension."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0)], "pooled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])],
    )
    return _save(graph, path)


def colsum(path: Path) -> Path:
    """x FP32 [-1, 4] -> total [4], the sum of each column: an output as long as a batch of
    four rows, and still no batch dimension."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0)], "colsum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [4])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [0])],
    )
    return _save(graph, path)


def kinds(path: Path, names: Iterable[str] = KINDS) -> Path:
    """One input per datatype of `names`, `in_<TYPE>` [2, 3], passed through to `out_<TYPE>`."""
    nodes, inputs, outputs = [], [], []
    for name in names:
        element = KINDS[name]
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{name}", element, [2, 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", element, [2, 3]))
    return _save(helper.make_graph(nodes, "kinds", inputs, outputs), path)


def repository(root: Path) -> Path:
    """The test model repository:

    - `affine` (version 1: 2x+1) and its versions 1 (2x+1) and 2 (3x-1) under `versioned`;
    - `batched`: affine 2x+1 with dynamic batching (up to 8 rows, 200 ms delay);
    - `pooled`: one sum over the whole input, with batching on though it cannot be split;
    - `colsum`: column sums, the same (its output's length can equal a batch's rows);
    - `kinds`: every datatype through Identity;
    - `typed`: the same without FP16, the one datatype gRPC's typed contents cannot carry.
    """
    affine(root / "affine" / "model.onnx", 2.0, 1.0)
    affine(root / "versioned" / "1" / "model.onnx", 2.0, 1.0)
    affine(root / "versioned" / "2" / "model.onnx", 3.0, -1.0)
    affine(root / "batched" / "model.onnx", 2.0, 1.0)
    (root / "batched" / "config.toml").write_text("max_batch_size = 8\nmax_queue_delay_us = 200000\n")
    pooled(root / "pooled" / "model.onnx")
    (root / "pooled" / "config.toml").write_text("max_batch_size = 8\nmax_queue_delay_us = 200000\n")
    colsum(root / "colsum" / "model.onnx")
    (root / "colsum" / "config.toml").write_text("max_batch_size = 8\nmax_queue_delay_us = 200000\n")
    kinds(root / "kinds" / "model.onnx")
    kinds(root / "typed" / "model.onnx", [name for name in KINDS if name != "FP16"])
    return root


def kinds_inputs() -> dict[str, np.ndarray]:
    """A [2, 3] array of every datatype, with values that survive a JSON round trip."""
    base = np.arange(6).reshape(2, 3)
    out = {}
    for name in KINDS:
        if name == "BOOL":
            out[name] = base % 2 == 0
        elif name == "BYTES":
            out[name] = np.array([f"s{i}-ü".encode() for i in range(6)], dtype=object).reshape(2, 3)
        else:
            out[name] = (base + 1).astype(DATATYPES[name]) * (1 if name.startswith("U") else -1)
    return out
