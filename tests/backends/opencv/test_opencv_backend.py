"""The OpenCV backend through the kernel, and its agreement with the onnxruntime backend:
the same ONNX graph through both, a Darknet net through OpenCV's reader and through the
onnxruntime converter (a synthetic one using every supported section, and the real COCO
yolov3-tiny on a real photo)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kernel
from tests.backends.served import Served
from tests.realmodels import letterbox, photo, yolov3_tiny

FORCE_ORT, FORCE_CV = 'backend = "onnxruntime"\n', 'backend = "opencv"\n'


class Conv(NamedTuple):
    filters: int
    size: int
    batch_normalize: bool


# A Darknet net using every section the converter reads: 32x32 input, heads of 8x8 and 16x16.
SYNTHETIC_CFG = """[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-2
activation=linear

[maxpool]
size=2
stride=1

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=14
activation=linear

[yolo]
mask=2,3
anchors=4,5, 8,9, 12,14, 20,22
classes=2
num=4

[route]
layers=-4

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[upsample]
stride=2

[route]
layers=-1, 2

[route]
layers=-1
groups=2
group_id=1

[convolutional]
size=1
stride=1
pad=1
filters=14
activation=linear

[yolo]
mask=0,1
anchors=4,5, 8,9, 12,14, 20,22
classes=2
num=4
"""
# (filters, size, batch_normalize) of each conv above, with the channels it reads.
SYNTHETIC_CONVS = [
    (Conv(8, 3, True), 3), (Conv(16, 3, True), 8), (Conv(16, 3, True), 16),
    (Conv(16, 3, True), 16), (Conv(14, 1, False), 16), (Conv(8, 1, True), 16), (Conv(14, 1, False), 12),
]


def write_synthetic_darknet(folder: Path) -> None:
    """SYNTHETIC_CFG with random weights of sensible sizes, in Darknet's file layout."""
    rng = np.random.default_rng(7)
    values = []
    for conv, channels in SYNTHETIC_CONVS:
        values.append(rng.normal(0, 0.1, conv.filters))  # biases
        if conv.batch_normalize:
            values += [rng.uniform(0.5, 1.5, conv.filters), rng.normal(0, 0.1, conv.filters),
                       rng.uniform(0.5, 1.5, conv.filters)]
        fan_in = channels * conv.size ** 2  # keeps activations, and so exp(w), moderate
        values.append(rng.normal(0, fan_in ** -0.5, conv.filters * fan_in))
    folder.mkdir(parents=True)
    header = np.array([0, 2, 5], "<i4").tobytes() + np.array([32000], "<i8").tobytes()
    (folder / "model.weights").write_bytes(header + np.concatenate(values).astype("<f4").tobytes())
    (folder / "model.cfg").write_text(SYNTHETIC_CFG)


def small_cnn() -> onnx.ModelProto:
    """Conv, Relu, MaxPool and a Sigmoid side output on [1, 3, 8, 8]; the weights are
    initializers that older exporters also list as graph inputs."""
    rng = np.random.default_rng(3)
    weight = numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("MaxPool", ["r"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Sigmoid", ["c"], ["gate"]),
        ],
        "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 4, 4, 4]),
         helper.make_tensor_value_info("gate", TensorProto.FLOAT, [1, 4, 8, 8])],
        [weight, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def put(folder: Path, files: dict[str, bytes | str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = folder / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)


def identity(elem_type: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", elem_type, [2])], [helper.make_tensor_value_info("y", elem_type, [2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def dynamic_sum() -> onnx.ModelProto:
    """y[n] = sum of x[n, :]: a [N, 3] input and a [N] output, which cv2.dnn returns as [N, 1]."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)], "sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    models = tmp_path_factory.mktemp("models")
    cnn = small_cnn().SerializeToString()
    put(models / "cnn_ort", {"model.onnx": cnn})
    put(models / "cnn_cv", {"model.onnx": cnn, "config.toml": FORCE_CV})
    put(models / "corrupt_cv", {"model.onnx": b"\x08\x07garbage\xff", "config.toml": FORCE_CV})
    put(models / "gpu_cv", {"model.onnx": cnn, "config.toml": FORCE_CV + 'processor = "gpu"\n'})
    put(models / "gpu_or_cpu_cv", {"model.onnx": cnn, "config.toml":
                                   FORCE_CV + 'processor = "gpu"\nallow_cpu_fallback = true\n'})
    put(models / "int64_cv", {"model.onnx": identity(TensorProto.INT64).SerializeToString(), "config.toml": FORCE_CV})
    put(models / "dynamic_cv", {"model.onnx": dynamic_sum().SerializeToString(), "config.toml": FORCE_CV})
    write_synthetic_darknet(models / "synthetic_cv")
    write_synthetic_darknet(models / "synthetic_ort")
    put(models / "synthetic_ort", {"config.toml": FORCE_ORT})
    real = yolov3_tiny()
    for name, config in (("yolo_cv", ""), ("yolo_ort", FORCE_ORT)):
        (models / name).mkdir()
        (models / name / "model.weights").symlink_to(real.weights)
        (models / name / "model.cfg").symlink_to(real.cfg)
        put(models / name, {"config.toml": config})
    k = kernel.create_kernel(options={"kernel": {
        "model_dir": [str(models)], "state_dir": str(tmp_path_factory.mktemp("state")),
    }})
    s = Served(k)
    yield s
    s.close()


def test_onnx_metadata_comes_from_the_graph(served: Served) -> None:
    session = served.session("cnn_cv")
    assert [(i.name, i.datatype, i.shape) for i in session.inputs] == [("x", "FP32", (1, 3, 8, 8))]
    assert [(o.name, o.shape) for o in session.outputs] == [("pooled", (1, 4, 4, 4)), ("gate", (1, 4, 8, 8))]


@pytest.mark.parametrize("strided", [False, True])
def test_same_onnx_model_agrees_with_onnxruntime(served: Served, strided: bool) -> None:
    x = np.random.default_rng(0).normal(size=(1, 3, 16, 8)).astype(np.float32)
    x = x[:, :, ::2] if strided else np.ascontiguousarray(x[:, :, :8])
    with_cv, with_ort = served.infer("cnn_cv", {"x": x}), served.infer("cnn_ort", {"x": x})
    assert served.kernel.registry.get("cnn_ort").describe()["backend"] == "onnxruntime"
    for name in ("pooled", "gate"):
        assert with_cv[name].shape == with_ort[name].shape
        np.testing.assert_allclose(with_cv[name], with_ort[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"x": np.zeros((1, 3, 8, 8), np.uint8)}, "expected datatype FP32, got UINT8"),
        ({"x": np.zeros((2, 3, 8, 8), np.float32)}, "expected shape"),
        ({"images": np.zeros((1, 3, 8, 8), np.float32)}, "unknown input 'images'"),
    ],
)
def test_invalid_inputs(served: Served, inputs: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(kernel.InvalidInput, match=message):
        served.infer("cnn_cv", inputs)


def test_tensors_a_float_cannot_hold_are_refused_at_load(served: Served) -> None:
    # cv2.dnn computes in float32: an INT64 identity turned 2**40 + 1 into 1
    with pytest.raises(kernel.ModelError, match="'x' is INT64: OpenCV computes in 32-bit floats"):
        served.run(served.kernel.registry.load("int64_cv"))


def test_outputs_keep_their_declared_rank_and_empty_inputs_are_refused(served: Served) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert served.infer("dynamic_cv", {"x": x})["y"].tolist() == [3.0, 12.0]
    with pytest.raises(kernel.InvalidInput, match="'x' has no elements"):  # it answered uninitialised memory
        served.infer("dynamic_cv", {"x": np.zeros((0, 3), np.float32)})


def test_backend_choice_per_format(served: Served) -> None:
    onnx_choice = served.kernel.registry.get("cnn_ort").describe()
    assert onnx_choice["backend"] == "onnxruntime"
    assert "preferred over opencv" in onnx_choice["backend_reason"]
    darknet_choice = served.kernel.registry.get("yolo_cv").describe()
    assert darknet_choice["backend"] == "opencv"
    assert darknet_choice["backend_reason"] == "reads darknet on cpu; preferred over onnxruntime (priority 30)"


def test_corrupt_model_is_a_clear_error_and_others_keep_serving(served: Served) -> None:
    with pytest.raises(kernel.ModelError, match="corrupt_cv.*OpenCV cannot read"):
        served.run(served.kernel.registry.load("corrupt_cv"))
    assert served.kernel.registry.get("corrupt_cv").describe()["state"] == "failed"
    assert served.infer("cnn_cv", {"x": np.zeros((1, 3, 8, 8), np.float32)})["pooled"].shape == (1, 4, 4, 4)


def test_gpu_without_cuda(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(kernel.ModelError, match="no CUDA device.*allow_cpu_fallback"):
        served.run(served.kernel.registry.load("gpu_cv"))
    with caplog.at_level(logging.WARNING, logger="kernel.opencv"):
        served.session("gpu_or_cpu_cv")
    assert "running it on the CPU" in caplog.text


def test_concurrent_inference_is_serialised(served: Served) -> None:
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(1, 3, 8, 8)).astype(np.float32) for _ in range(16)]
    expected = [served.infer("cnn_ort", {"x": x})["gate"] for x in batches]

    async def together() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(served.kernel.registry.infer("cnn_cv", {"x": x}) for x in batches))

    for got, want in zip(served.run(together()), expected):
        np.testing.assert_allclose(got["gate"], want, rtol=1e-5, atol=1e-5)


def compare_darknet(cv: dict[str, np.ndarray], converted: np.ndarray, size: int) -> tuple[float, int]:
    """Max abs difference between OpenCV's Darknet heads (boxes as fractions of the input,
    class scores times objectness, zero below its threshold) and the converter's output;
    also how many class scores OpenCV kept."""
    ours = converted[0].copy()
    theirs = np.concatenate(list(cv.values()), axis=0)
    assert ours.shape == theirs.shape
    ours[:, :4] /= size
    scores = ours[:, 4:5] * ours[:, 5:]
    kept = theirs[:, 5:] > 0
    diffs = [np.abs(ours[:, :5] - theirs[:, :5]).max(), np.abs(scores[kept] - theirs[:, 5:][kept]).max(initial=0)]
    return float(max(diffs)), int(kept.sum())


def test_synthetic_darknet_agrees_across_backends(served: Served) -> None:
    session = served.session("synthetic_cv")
    assert [(i.name, i.shape) for i in session.inputs] == [("images", (1, 3, 32, 32))]
    assert [o.shape for o in session.outputs] == [(8 * 8 * 2, 7), (16 * 16 * 2, 7)]
    x = np.random.default_rng(5).uniform(size=(1, 3, 32, 32)).astype(np.float32)
    cv = served.infer("synthetic_cv", {"images": x})
    converted = served.infer("synthetic_ort", {"images": x})["output0"]
    diff, kept = compare_darknet(cv, converted, 32)
    assert kept > 0
    assert diff < 1e-4


def test_real_yolov3_tiny_agrees_and_finds_people(served: Served) -> None:
    x = letterbox(photo("bus.jpg"), 416)
    cv = served.infer("yolo_cv", {"images": x})
    assert {name: v.shape for name, v in cv.items()} == {"yolo_16": (507, 85), "yolo_23": (2028, 85)}
    converted = served.infer("yolo_ort", {"images": x})["output0"]
    assert converted.shape == (1, 2535, 85)
    diff, kept = compare_darknet(cv, converted, 416)
    assert kept > 0
    assert diff < 1e-4

    import cv2

    rows = converted[0]
    person = rows[:, 4] * rows[:, 5]
    boxes = [[cx - w / 2, cy - h / 2, w, h] for cx, cy, w, h in rows[:, :4].tolist()]
    people = cv2.dnn.NMSBoxes(boxes, person.tolist(), 0.5, 0.45)
    assert len(people) >= 3  # 0.97, 0.66 and 0.58 (the bus itself only 0.33)
    assert person.max() > 0.9


def test_import_does_not_load_opencv() -> None:
    code = "import sys, kernel_opencv; print('cv2' in sys.modules, 'onnx' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
