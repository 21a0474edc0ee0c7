"""The coral backend through the kernel: a real face detector, quantized models built here,
Edge TPU fallbacks and errors. The Edge TPU itself is not attached in these tests."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kernel_coral.session
import numpy as np
import pytest
from kernel_coral import CoralBackend
from kernel_coral.flatbuffer import NotTFLite, custom_ops

import kernel

QUANTIZED = {
    # dtype: (input scale, zero point), (output scale, zero point)
    "uint8": ((0.5, 128), (0.25, 128)),
    "int8": ((0.5, -3), (0.25, 5)),
}


def model_dir(tmp_path: Path, models: dict[str, bytes | Path], config: str = "") -> Path:
    """A --model-dir with one folder per model, each with `config` as its config.toml."""
    root = tmp_path / "models"
    for name, content in models.items():
        folder = root / name
        folder.mkdir(parents=True)
        target = folder / "model.tflite"
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_bytes(content)
        if config:
            (folder / "config.toml").write_text(config)
    return root


def face_crop(photo: Path) -> np.ndarray:
    """The photo's centre square as the detector wants it: [1,128,128,3] RGB in [-1, 1]."""
    try:
        import cv2
    except ImportError:
        from PIL import Image

        with Image.open(photo) as image:
            rgb = np.asarray(image.convert("RGB"))
        resize: Callable[[np.ndarray], np.ndarray] = lambda a: np.asarray(
            Image.fromarray(a).resize((128, 128), Image.BILINEAR)
        )
    else:
        rgb = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
        resize = lambda a: cv2.resize(a, (128, 128), interpolation=cv2.INTER_LINEAR)
    height, width = rgb.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = np.ascontiguousarray(rgb[top : top + side, left : left + side])
    return (resize(square).astype(np.float32) / 127.5 - 1.0)[None]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64).clip(-80, 80)))


def test_face_detector_finds_a_face(tmp_path, face_detector, zidane, serve_models):
    root = model_dir(tmp_path, {"face": face_detector})
    photo = face_crop(zidane)
    blank = np.zeros((1, 128, 128, 3), np.float32)

    async def body(k: kernel.Kernel) -> Any:
        model = await k.registry.load("face")
        with_face = await k.registry.infer("face", {"input": photo})
        without = await k.registry.infer("dir.face", {"input": blank})
        return model.choice.backend, model.session, with_face, without

    backend, session, with_face, without = serve_models(root, body)
    assert backend == "coral"
    assert session.inputs == [kernel.TensorInfo(name="input", datatype="FP32", shape=(1, 128, 128, 3))]
    assert {o.name: o.shape for o in session.outputs} == {
        "regressors": (1, 896, 16), "classificators": (1, 896, 1),
    }
    assert session.memory_bytes == face_detector.stat().st_size
    assert with_face["regressors"].shape == (1, 896, 16)
    assert with_face["classificators"].shape == (1, 896, 1)
    assert sigmoid(with_face["classificators"]).max() > 0.5
    assert sigmoid(without["classificators"]).max() < 0.5


def test_tpu_without_edge_tpu_runs_a_plain_model_on_cpu(tmp_path, face_detector, serve_models, caplog):
    root = model_dir(tmp_path, {"face": face_detector}, config='processor = "tpu"\n')

    async def body(k: kernel.Kernel) -> dict[str, np.ndarray]:
        return await k.registry.infer("face", {"input": np.zeros((1, 128, 128, 3), np.float32)})

    with caplog.at_level(logging.WARNING, logger="kernel.coral"):
        out = serve_models(root, body, {"coral": {"delegate": "libedgetpu-absent.so.1"}})
    assert out["classificators"].shape == (1, 896, 1)
    notes = [r.getMessage() for r in caplog.records if r.name == "kernel.coral"]
    assert any("dir.face" in n and "no Edge TPU" in n and "on the CPU" in n for n in notes), notes


def test_wrong_dtype_or_shape_is_invalid_input(tmp_path, face_detector, serve_models):
    root = model_dir(tmp_path, {"face": face_detector})
    bad = {
        "dtype": {"input": np.zeros((1, 128, 128, 3), np.float64)},
        "shape": {"input": np.zeros((1, 64, 64, 3), np.float32)},
        "name": {"image": np.zeros((1, 128, 128, 3), np.float32)},
    }

    async def body(k: kernel.Kernel) -> dict[str, str]:
        errors = {}
        for case, inputs in bad.items():
            with pytest.raises(kernel.InvalidInput) as caught:
                await k.registry.infer("face", inputs)
            errors[case] = str(caught.value)
        return errors

    errors = serve_models(root, body)
    assert "expected datatype FP32, got FP64" in errors["dtype"]
    assert "expected shape [1, 128, 128, 3]" in errors["shape"]
    assert "unknown input 'image'" in errors["name"]


@pytest.mark.parametrize("dtype", sorted(QUANTIZED))
def test_quantized_model_with_dynamic_batch(tmp_path, build_tflite, serve_models, dtype):
    (in_scale, in_zero), (out_scale, out_zero) = QUANTIZED[dtype]
    root = model_dir(tmp_path, {"add": build_tflite(dtype, (in_scale, in_zero), (out_scale, out_zero))})
    info = np.iinfo(dtype)
    # Values around the zero point; batch sizes that change between calls make it resize.
    batches = [(np.arange(n * 4).reshape(n, 4) + in_zero - 6).astype(dtype) for n in (1, 3, 2, 3)]

    async def body(k: kernel.Kernel) -> Any:
        model = await k.registry.load("add")
        outs = [await k.registry.infer("add", {"x": x}) for x in batches]
        with pytest.raises(kernel.InvalidInput, match=f"expected datatype {dtype.upper()}"):
            await k.registry.infer("add", {"x": batches[0].astype(np.float32)})
        return model.session, outs

    session, outs = serve_models(root, body)
    assert session.inputs == [kernel.TensorInfo(
        name="x", datatype=dtype.upper(), shape=(-1, 4), scale=in_scale, zero_point=in_zero,
    )]
    assert session.outputs == [kernel.TensorInfo(
        name="y", datatype=dtype.upper(), shape=(-1, 4), scale=out_scale, zero_point=out_zero,
    )]
    for x, out in zip(batches, outs):
        real = 2 * in_scale * (x.astype(np.int64) - in_zero)  # the model is y = x + x
        want = np.clip(np.round(real / out_scale) + out_zero, info.min, info.max).astype(dtype)
        assert out["y"].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(out["y"], want)


def test_concurrent_requests_of_different_batch_sizes(tmp_path, build_tflite):
    """The interpreter is shared: resizing and running must not interleave across threads."""
    quant_in, quant_out = QUANTIZED["uint8"]
    (tmp_path / "add.tflite").write_bytes(build_tflite("uint8", quant_in, quant_out))
    spec = kernel.ModelSpec(
        name="add", qualified="dir.add", source="dir", path=str(tmp_path / "add.tflite"), format="tflite",
    )
    session = CoralBackend().load(spec)
    failures: list[str] = []

    def worker(rows: int) -> None:
        x = np.full((rows, 4), 130, np.uint8)  # real 1.0 -> y real 2.0 -> q 136
        for _ in range(200):
            y = session.infer({"x": x})["y"]
            if y.shape != (rows, 4) or (y != 136).any():
                failures.append(f"{rows} rows gave {y.shape} {np.unique(y)}")
                return

    threads = [threading.Thread(target=worker, args=(rows,)) for rows in (1, 2, 3, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    session.close()
    assert not failures


def test_inputs_the_interpreter_cannot_take_are_invalid_and_leave_it_working(tmp_path, build_tflite, monkeypatch):
    # ADD(x, z) of two dynamic batches: batches 2 and 3 fail when the arena is allocated,
    # which left it unallocated for every later call.
    quant_in, quant_out = QUANTIZED["uint8"]
    (tmp_path / "add2.tflite").write_bytes(build_tflite("uint8", quant_in, quant_out, second_input=True))
    spec = kernel.ModelSpec(
        name="add2", qualified="dir.add2", source="dir", path=str(tmp_path / "add2.tflite"), format="tflite",
    )
    session = CoralBackend().load(spec)

    def rows(n: int) -> np.ndarray:
        return np.full((n, 4), 130, np.uint8)  # real 1.0: y = x + z is real 2.0, q 136

    # TFLite repeats every earlier error in each new one: each answer says only its own, and
    # the interpreter is built anew once they add up (so they cannot grow without bound)
    monkeypatch.setattr(kernel_coral.session, "MAX_ERROR_TEXT", 1000)
    messages = set()
    for _ in range(30):
        with pytest.raises(kernel.InvalidInput, match="cannot run inputs of these shapes") as refused:
            session.infer({"x": rows(2), "z": rows(3)})
        messages.add(refused.value.detail)
    assert len(messages) == 1 and len(messages.pop()) < 200
    assert len(session._reported) <= 1000
    for n in (3, 1, 2):
        y = session.infer({"x": rows(n), "z": rows(n)})["y"]
        assert y.shape == (n, 4) and (y == 136).all()
    session.close()


@pytest.mark.parametrize("processor", ["cpu", "tpu"])
def test_edge_tpu_model_without_edge_tpu_is_a_clear_error(tmp_path, build_tflite, serve_models, processor):
    compiled = build_tflite("uint8", (0.5, 128), (0.25, 128), custom_code="edgetpu-custom-op")
    root = model_dir(tmp_path, {"detector_edgetpu": compiled}, config=f'processor = "{processor}"\n')

    async def body(k: kernel.Kernel) -> tuple[str, str | None]:
        with pytest.raises(kernel.ModelError, match="requires an Edge TPU"):
            await k.registry.infer("detector_edgetpu", {"x": np.zeros((1, 4), np.uint8)})
        model = k.registry.get("detector_edgetpu")
        return model.state, model.error

    state, error = serve_models(root, body)
    assert state == "failed"
    assert "dir.detector_edgetpu is compiled for the Edge TPU" in error
    assert "requires an Edge TPU" in error


def test_corrupt_model_fails_with_a_clear_error(tmp_path, face_detector, serve_models):
    truncated = face_detector.read_bytes()[:2000]
    root = model_dir(tmp_path, {"garbage": b"this is not a model\n" * 100, "truncated": truncated})

    async def body(k: kernel.Kernel) -> dict[str, tuple[str, str | None]]:
        for name in ("garbage", "truncated"):
            with pytest.raises(kernel.ModelError):
                await k.registry.load(name)
        models = {name: k.registry.get(name) for name in ("garbage", "truncated")}
        return {name: (model.state, model.error) for name, model in models.items()}

    models = serve_models(root, body)
    for name, (state, error) in models.items():
        assert state == "failed"
        assert f"model dir.{name}: " in error and "is not a TFLite model" in error
    assert "no TFL3 file identifier" in models["garbage"][1]


def test_threads_from_option_and_model_config(tmp_path, face_detector, serve_models):
    root = model_dir(tmp_path, {"face": face_detector}, config="threads = 0\n")
    shutil.copytree(root / "face", root / "face2")
    (root / "face2" / "config.toml").write_text("threads = 2\n")

    async def body(k: kernel.Kernel) -> Any:
        with pytest.raises(kernel.ModelError, match="threads must be a whole number >= 1"):
            await k.registry.load("face")
        await k.registry.load("face2")
        return k.backends["coral"].config.threads, k.registry.get("face2").state

    assert serve_models(root, body, {"coral": {"threads": 1}}) == (1, "ready")
    with pytest.raises(kernel.StartupError, match="threads"):
        serve_models(root, body, {"coral": {"threads": 0}})


def test_custom_op_scan(build_tflite, face_detector):
    assert custom_ops(face_detector.read_bytes()) == set()
    compiled = build_tflite("uint8", (0.5, 128), (0.25, 128), custom_code="edgetpu-custom-op")
    assert custom_ops(compiled) == {"edgetpu-custom-op"}
    with pytest.raises(NotTFLite):
        custom_ops(b"\0" * 16)
