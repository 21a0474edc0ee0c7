"""Detector model files built for the detect tests: an end-to-end ONNX (output [1, N, 6]),
an SSD-style TFLite (boxes, classes, scores, count), a self-signed certificate, and the
COCO yolov3-tiny converted to a YOLOv5-layout ONNX (output [1, N, 85] with objectness).

The ONNX and TFLite detectors answer fixed detections whatever the image, which is what
makes their decoders' geometry checkable to the pixel through the real runtimes.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from tests.realmodels import yolov3_tiny
from tests.tflite_flatbuffers import table as flatbuffer_table
from tests.tflite_flatbuffers import vector as flatbuffer_vector


def end2end_onnx(path: Path, rows: np.ndarray, names: Sequence[str], size: int = 640) -> Path:
    """An ONNX model with input `images` [1, 3, size, size] and output [1, N, 6] (x1, y1,
    x2, y2 in input pixels, score, class) equal to `rows`, flagged `end2end` as
    Ultralytics' NMS-free exports are, class names in metadata `names`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rows = np.asarray(rows, dtype=np.float32)[None]
    # output = rows + 0 * mean(images): the image flows through, the answer stays fixed.
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["rows", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "end2end",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(rows.shape))],
        [numpy_helper.from_array(rows, "rows"), numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"end2end": "true", "names": repr(dict(enumerate(names)))})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


#: TensorType FLOAT32 and BuiltinOperator ADD of TFLite's schema.fbs.
_FLOAT32, _ADD = 0, 0


def ssd_tflite(path: Path, outputs: Sequence[tuple[str, np.ndarray]], size: int = 300) -> Path:
    """A TFLite model with a float input [1, size, size, 3] whose outputs are the given
    constants, in order (each computed as ADD(value, zeros) so the runtime produces it),
    written with the flatbuffers builder after TFLite's schema.fbs."""
    import flatbuffers

    b = flatbuffers.Builder(4096)

    vector, table = partial(flatbuffer_vector, b), partial(flatbuffer_table, b)

    def tensor(name: str, shape: Sequence[int], buffer: int) -> int:
        # Tensor: shape (0), type (1), buffer (2), name (3).
        return table([
            ("UOffsetTRelative", 0, vector(list(shape), b.PrependInt32)),
            ("Int8", 1, _FLOAT32),
            ("Uint32", 2, buffer),
            ("UOffsetTRelative", 3, b.CreateString(name)),
        ])

    contents: list[bytes] = [b""]  # buffer 0: the empty one activations use
    tensors = [tensor("image", [1, size, size, 3], 0)]
    operators, outs = [], []
    for name, value in outputs:
        value = np.asarray(value, dtype=np.float32)
        ids = []
        for suffix, data in (("value", value), ("zeros", np.zeros_like(value))):
            contents.append(data.tobytes())
            ids.append(len(tensors))
            tensors.append(tensor(f"{name}/{suffix}", value.shape, len(contents) - 1))
        outs.append(len(tensors))
        tensors.append(tensor(name, value.shape, 0))
        # Operator: opcode_index (0), inputs (1), outputs (2).
        operators.append(table([("UOffsetTRelative", 1, vector(ids, b.PrependInt32)),
                                ("UOffsetTRelative", 2, vector([outs[-1]], b.PrependInt32))]))
    # OperatorCode: deprecated_builtin_code (0), version (2), builtin_code (3).
    opcode = table([("Int8", 0, _ADD), ("Int32", 2, 1), ("Int32", 3, _ADD)])
    # SubGraph: tensors (0), inputs (1), outputs (2), operators (3).
    subgraph = table([
        ("UOffsetTRelative", 0, vector(tensors, b.PrependUOffsetTRelative)),
        ("UOffsetTRelative", 1, vector([0], b.PrependInt32)),
        ("UOffsetTRelative", 2, vector(outs, b.PrependInt32)),
        ("UOffsetTRelative", 3, vector(operators, b.PrependUOffsetTRelative)),
    ])
    buffers = []
    for data in contents:
        if not data:
            b.StartObject(1)
            buffers.append(b.EndObject())
            continue
        # Buffer: data (0), a byte vector aligned for float reads.
        b.StartVector(1, len(data), 16)
        b.head -= len(data)
        b.Bytes[b.head:b.head + len(data)] = data
        buffers.append(table([("UOffsetTRelative", 0, b.EndVector())]))
    # Model: version (0), operator_codes (1), subgraphs (2), buffers (4).
    model = table([
        ("Uint32", 0, 3),
        ("UOffsetTRelative", 1, vector([opcode], b.PrependUOffsetTRelative)),
        ("UOffsetTRelative", 2, vector([subgraph], b.PrependUOffsetTRelative)),
        ("UOffsetTRelative", 4, vector(buffers, b.PrependUOffsetTRelative)),
    ])
    b.Finish(model, file_identifier=b"TFL3")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(b.Output()))
    return path


def yolov5_layout_onnx(path: Path) -> Path:
    """COCO yolov3-tiny converted by the onnxruntime backend's Darknet converter: a fixed
    416x416 input and one output [1, 2535, 85] (cx, cy, w, h, objectness, 80 class
    scores), with the COCO names in metadata `names` as Ultralytics exports carry them."""
    import onnx
    from kernel_onnxruntime.darknet_cache import darknet_onnx

    darknet = yolov3_tiny()
    model = onnx.load_from_string(darknet_onnx(darknet.weights, darknet.cfg, None))
    names = [line.strip() for line in darknet.names.read_text().splitlines() if line.strip()]
    onnx.helper.set_model_props(model, {"names": repr(dict(enumerate(names)))})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1",
    ], check=True, capture_output=True, timeout=30)
    return cert, key
