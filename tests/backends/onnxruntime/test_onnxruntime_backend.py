"""The onnxruntime backend through the kernel: small ONNX graphs built here with known
outputs, every datatype, input validation, failures, gpu requests, threads, and Darknet
conversion with its cache; a real YOLOv8-layout model with dynamic shapes."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import kernel
from tests.backends.served import Served
from tests.realmodels import nudenet_320n

DTYPES = {
    "FP32": (TensorProto.FLOAT, np.float32),
    "FP16": (TensorProto.FLOAT16, np.float16),
    "UINT8": (TensorProto.UINT8, np.uint8),
    "INT8": (TensorProto.INT8, np.int8),
    "INT32": (TensorProto.INT32, np.int32),
    "INT64": (TensorProto.INT64, np.int64),
    "BOOL": (TensorProto.BOOL, np.bool_),
}

# A Darknet net small enough to write by hand: conv+bn, maxpool, conv, yolo head.
TINY_CFG = """[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
size=1
stride=1
pad=1
filters=14
activation=linear

[yolo]
mask=0,1
anchors=4,5, 8,9
classes=2
"""
# biases, bn scale/mean/variance and 3*3*3 weights per filter; then 14 biases + 14*4 weights.
TINY_VALUES = 4 * 4 + 4 * 3 * 9 + 14 + 14 * 4


def save(model: onnx.ModelProto, folder: Path, config: str | None = None) -> None:
    folder.mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")
    if config is not None:
        (folder / "config.toml").write_text(config)


def affine_model() -> onnx.ModelProto:
    """y = 2 * x + 1 on [N, 4] FP32."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"]), helper.make_node("Add", ["t", "one"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
         helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def echo_model(elem_type: int) -> onnx.ModelProto:
    """Returns its input unchanged, and the input's shape."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["same"]), helper.make_node("Shape", ["x"], ["shape"])],
        "echo",
        [helper.make_tensor_value_info("x", elem_type, ["N", 2, 3])],
        [helper.make_tensor_value_info("same", elem_type, ["N", 2, 3]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def strings_model() -> onnx.ModelProto:
    """Returns its [N] string input."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "strings",
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["N"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def conv_model() -> onnx.ModelProto:
    """A 3x3 all-ones convolution of one-channel images of any size (3x3 at least)."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, "h", "w"])],
        [helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 3, 3], [1.0] * 9)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def write_darknet(folder: Path, name: str, values: int, seed: int = 0) -> None:
    """TINY_CFG with `values` random weights after a format-0.2 header."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.cfg").write_text(TINY_CFG)
    rng = np.random.default_rng(seed)
    data = rng.uniform(0.1, 1.0, values).astype("<f4")  # positive: valid variances
    header = np.array([0, 2, 0], "<i4").tobytes() + np.zeros(1, "<i8").tobytes()
    (folder / f"{name}.weights").write_bytes(header + data.tobytes())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    models = tmp_path_factory.mktemp("models")
    save(affine_model(), models / "affine")
    for datatype, (elem_type, _) in DTYPES.items():
        save(echo_model(elem_type), models / f"echo_{datatype.lower()}")
    (models / "corrupt").mkdir()
    (models / "corrupt" / "model.onnx").write_bytes(b"this is not a protobuf \xff\x00")
    save(affine_model(), models / "on_gpu", 'processor = "gpu"\nbackend = "onnxruntime"\n')
    save(affine_model(), models / "gpu_or_cpu",
         'processor = "gpu"\nbackend = "onnxruntime"\nallow_cpu_fallback = true\n')
    save(affine_model(), models / "one_thread", 'intra_op_threads = 1\nbackend = "onnxruntime"\n')
    save(strings_model(), models / "echo_strings")
    save(conv_model(), models / "conv")
    (models / "short").mkdir()
    write_darknet(models / "short", "model", TINY_VALUES - 10)
    (models / "short" / "config.toml").write_text('backend = "onnxruntime"\n')
    (models / "dark").mkdir()
    write_darknet(models / "dark", "model", TINY_VALUES)
    (models / "dark" / "config.toml").write_text('backend = "onnxruntime"\n')
    state = tmp_path_factory.mktemp("state")
    k = kernel.create_kernel(options={
        "kernel": {"model_dir": [str(models)], "state_dir": str(state)},
        "onnxruntime": {"intra_op_threads": 2, "spinning": False},
    })
    s = Served(k)
    yield s
    s.close()


def test_metadata_reports_dynamic_dims_as_minus_one(served: Served) -> None:
    session = served.session("affine")
    assert [(i.name, i.datatype, i.shape) for i in session.inputs] == [("x", "FP32", (-1, 4))]
    assert [(o.name, o.datatype, o.shape) for o in session.outputs] == [("y", "FP32", (-1, 4))]
    assert all(i.scale is None and i.zero_point is None for i in session.inputs)
    assert session.memory_bytes == (Path(served.kernel.registry.get("affine").spec.path)).stat().st_size


@pytest.mark.parametrize("batch", [1, 3])
def test_known_outputs_at_any_batch(served: Served, batch: int) -> None:
    x = np.arange(batch * 4, dtype=np.float32).reshape(batch, 4)
    out = served.infer("affine", {"x": x})
    np.testing.assert_array_equal(out["y"], 2 * x + 1)


def test_strided_input(served: Served) -> None:
    x = np.arange(24, dtype=np.float32).reshape(4, 6)[::2, 1:5]
    assert not x.flags.c_contiguous
    np.testing.assert_array_equal(served.infer("affine", {"x": x})["y"], 2 * x + 1)


@pytest.mark.parametrize("datatype", list(DTYPES))
def test_every_datatype(served: Served, datatype: str) -> None:
    dtype = DTYPES[datatype][1]
    name = f"echo_{datatype.lower()}"
    session = served.session(name)
    assert [(i.datatype, i.shape) for i in session.inputs] == [(datatype, (-1, 2, 3))]
    assert [(o.name, o.datatype) for o in session.outputs] == [("same", datatype), ("shape", "INT64")]
    x = (np.arange(12).reshape(2, 2, 3) % 3).astype(dtype)
    out = served.infer(name, {"x": x})
    assert out["same"].dtype == dtype
    np.testing.assert_array_equal(out["same"], x)
    np.testing.assert_array_equal(out["shape"], [2, 2, 3])


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"x": np.zeros((1, 4), np.float64)}, "expected datatype FP32, got FP64"),
        ({"x": np.zeros((1, 5), np.float32)}, "expected shape [-1, 4], got [1, 5]"),
        ({"x": np.zeros(4, np.float32)}, "expected shape [-1, 4], got [4]"),
        ({"x": np.zeros((1, 4), np.float32), "z": np.zeros(1, np.float32)}, "unknown input 'z'"),
        ({}, "missing input 'x'"),
    ],
)
def test_invalid_inputs_are_refused_before_the_runtime(
    served: Served, inputs: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(kernel.InvalidInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        served.infer("affine", inputs)


def test_fixed_width_bytes_arrays_are_strings_too(served: Served) -> None:
    # onnxruntime read `S` arrays as NUL-terminated strings, past each element's end
    for x in (np.array([b"hello", b"world"]), np.array(["ab", "cd"]), np.array([b"ab", b"cd"], dtype=object)):
        assert served.infer("echo_strings", {"x": x})["y"].tolist() == [item.encode() if isinstance(item, str)
                                                                         else item for item in x.tolist()]


def test_inputs_the_graph_cannot_take_are_invalid_input(served: Served, capfd: pytest.CaptureFixture) -> None:
    # a 3x3 convolution of a 1x1 image: onnxruntime's INVALID_ARGUMENT, not a server error
    with pytest.raises(kernel.InvalidInput, match="cannot run these inputs: .*Conv"):
        served.infer("conv", {"x": np.ones((1, 1, 1, 1), np.float32)})
    # said once, by whoever reports the error, not also by onnxruntime on stderr
    assert "Conv" not in capfd.readouterr().err
    assert served.infer("conv", {"x": np.ones((1, 1, 3, 3), np.float32)})["y"].tolist() == [[[[9.0]]]]


def test_corrupt_model_fails_and_others_keep_serving(served: Served) -> None:
    with pytest.raises(kernel.ModelError, match="corrupt"):
        served.run(served.kernel.registry.load("corrupt"))
    described = served.kernel.registry.get("corrupt").describe()
    assert described["state"] == "failed"
    assert "onnxruntime cannot load" in described["error"]
    assert served.infer("affine", {"x": np.ones((1, 4), np.float32)})["y"].tolist() == [[3.0] * 4]


def test_backend_reason_is_described(served: Served) -> None:
    described = served.kernel.registry.get("affine").describe()
    assert described["backend"] == "onnxruntime"
    assert described["backend_reason"].startswith("reads onnx on cpu")
    forced = served.kernel.registry.get("dark").describe()
    assert forced["backend_reason"] == "configured in the model's config"


def test_gpu_without_a_provider_is_a_clear_error(served: Served) -> None:
    with pytest.raises(kernel.ModelError, match="no CUDA or TensorRT provider.*allow_cpu_fallback"):
        served.run(served.kernel.registry.load("on_gpu"))
    assert served.kernel.registry.get("on_gpu").describe()["state"] == "failed"


def test_gpu_falls_back_to_cpu_when_allowed(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kernel.onnxruntime"):
        out = served.infer("gpu_or_cpu", {"x": np.zeros((2, 4), np.float32)})
    np.testing.assert_array_equal(out["y"], np.ones((2, 4)))
    assert "running it on the CPU" in caplog.text


def test_thread_counts_from_config_and_model_params(served: Served) -> None:
    backend = served.kernel.backends["onnxruntime"]
    assert backend.config.intra_op_threads == 2
    options = served.session("affine")._session.get_session_options()
    assert options.intra_op_num_threads == 2
    options = served.session("one_thread")._session.get_session_options()
    assert options.intra_op_num_threads == 1
    # spinning off: idle runtime threads sleep instead of taking CPU from the server
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.parametrize(("section", "entries"), [
    # default: threads spin within a run and stop when it returns (no CPU burnt between runs)
    ({}, {"session.force_spinning_stop": "1"}),
    ({"spin_between_runs": True}, {"session.force_spinning_stop": None}),
    ({"spinning": False}, {"session.intra_op.allow_spinning": "0", "session.force_spinning_stop": None}),
])
def test_spinning_settings_reach_the_runtime(tmp_path: Path, section: dict, entries: dict) -> None:
    save(affine_model(), tmp_path / "models" / "affine")
    s = Served(kernel.create_kernel(options={
        "kernel": {"model_dir": [str(tmp_path / "models")], "state_dir": str(tmp_path / "state")},
        "onnxruntime": section,
    }))
    try:
        options = s.session("affine")._session.get_session_options()  # type: ignore[attr-defined]
        for key, value in entries.items():
            if value is None:
                with pytest.raises(RuntimeError, match="does not have configuration"):
                    options.get_session_config_entry(key)
            else:
                assert options.get_session_config_entry(key) == value
        np.testing.assert_array_equal(s.infer("affine", {"x": np.ones((1, 4), np.float32)})["y"], [[3, 3, 3, 3]])
    finally:
        s.close()


def test_options_follow_the_naming_rule(served: Served) -> None:
    from kernel.app import build_parser

    flags = [flag for flag, owner in build_parser(served.kernel.plugin_set).owners.items()
             if owner == "onnxruntime"]
    assert sorted(flags) == [
        "--no-onnxruntime-spin-between-runs", "--no-onnxruntime-spinning", "--onnxruntime-cache-dir",
        "--onnxruntime-inter-op-threads", "--onnxruntime-intra-op-threads", "--onnxruntime-spin-between-runs",
        "--onnxruntime-spinning",
    ]


def test_darknet_is_converted_once_and_cached(served: Served) -> None:
    cache = Path(served.kernel.config.kernel.state_dir) / "onnxruntime" / "darknet"
    session = served.session("dark")
    assert [(i.name, i.shape) for i in session.inputs] == [("images", (-1, 3, 32, 32))]
    # 16x16 cells after the maxpool, 2 anchors, 4 box values + objectness + 2 classes.
    out = served.infer("dark", {"images": np.full((1, 3, 32, 32), 0.5, np.float32)})
    assert out["output0"].shape == (1, 16 * 16 * 2, 7)
    assert np.all((out["output0"][..., 4:] >= 0) & (out["output0"][..., 4:] <= 1))
    (cached,) = cache.glob("*.onnx")
    stamp = cached.stat().st_mtime_ns
    served.run(served.kernel.registry.unload("dark"))
    served.session("dark")
    assert [p.stat().st_mtime_ns for p in cache.glob("*.onnx")] == [stamp]


def test_darknet_weights_that_do_not_match_the_cfg(served: Served) -> None:
    with pytest.raises(kernel.ModelError, match="weights do not match the cfg"):
        served.run(served.kernel.registry.load("short"))


def test_unsupported_darknet_section_is_named(tmp_path: Path) -> None:
    from kernel_onnxruntime.darknet import DarknetError, convert

    with pytest.raises(DarknetError, match=r"\[reorg\] at cfg line 5"):
        convert("[net]\nwidth=8\nheight=8\n\n[reorg]\nstride=2\n", b"\0" * 20)


def test_import_does_not_load_the_runtime() -> None:
    # Startup stays fast: onnxruntime and onnx load with the first model, not the plugin.
    code = "import sys, kernel_onnxruntime; print('onnxruntime' in sys.modules, 'onnx' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_real_yolov8_layout_model_with_dynamic_shapes(tmp_path: Path) -> None:
    model = nudenet_320n()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "nudenet.onnx").symlink_to(model)
    k = kernel.create_kernel(options={"kernel": {
        "model_dir": [str(tmp_path / "models")], "state_dir": str(tmp_path / "state"),
    }})
    s = Served(k)
    try:
        session = s.session("nudenet")
        (info,) = session.inputs
        assert info.datatype == "FP32" and info.shape == (-1, 3, -1, -1)
        assert all(-1 in o.shape for o in session.outputs)
        out = s.infer("nudenet", {info.name: np.full((1, 3, 320, 320), 0.5, np.float32)})
        (value,) = out.values()
        assert value.shape == (1, 22, 2100)  # 4 box values + 18 classes, 40^2 + 20^2 + 10^2 cells
    finally:
        s.close()
