"""Per-inference latency of each installed backend: the kernel's `Session.infer` against
the raw runtime on the same model and input, in one run.

The model is COCO yolov3-tiny (fetched like the tests' fixtures): onnxruntime runs the
ONNX the backend converts it to, OpenCV the Darknet files. Calls through the kernel and
raw calls alternate (their order flipping each round) after a warm-up, so drift in the
machine's speed affects both alike. Run from the repository root:

    python -m bench.backends [--iterations 200] [--warmup 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

import kernel
from kernel import ModelSpec
from tests.realmodels import letterbox, photo, yolov3_tiny

Call = Callable[[], object]


def raw_onnxruntime(spec: ModelSpec, x: np.ndarray) -> Call:
    import onnxruntime as ort
    from kernel_onnxruntime.darknet_cache import darknet_onnx

    model = darknet_onnx(Path(spec.path), Path(spec.files["cfg"]), cache_dir=None)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"images": x})


def raw_opencv(spec: ModelSpec, x: np.ndarray) -> Call:
    import cv2

    net = cv2.dnn.readNetFromDarknet(spec.files["cfg"], spec.path)
    names = net.getUnconnectedOutLayersNames()

    def run() -> object:
        net.setInput(x)
        return net.forward(names)

    return run


RAW = {"onnxruntime": raw_onnxruntime, "opencv": raw_opencv}


def measure(kernel_call: Call, raw_call: Call, iterations: int, warmup: int) -> tuple[list[float], list[float]]:
    for _ in range(warmup):
        kernel_call()
        raw_call()
    through, raw = [], []
    for i in range(iterations):
        pair = [(kernel_call, through), (raw_call, raw)]
        for call, times in pair if i % 2 else pair[::-1]:
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
    return through, raw


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()

    darknet = yolov3_tiny()
    spec = ModelSpec(
        name="yolov3-tiny", qualified="bench.yolov3-tiny", source="bench", path=str(darknet.weights),
        format="darknet", files={"cfg": str(darknet.cfg)},
    )
    x = letterbox(photo("bus.jpg"), 416)
    rows = []
    with tempfile.TemporaryDirectory() as state:
        k = kernel.create_kernel(options={"kernel": {"state_dir": state}})
        asyncio.run(k.startup())  # backends read their config here
        for name, backend in sorted(k.backends.items()):
            if name not in RAW:
                print(f"{name}: no raw runner in this benchmark; skipped")
                continue
            session = backend.load(spec)
            through, raw = measure(
                partial(session.infer, {"images": x}), RAW[name](spec, x), args.iterations, args.warmup
            )
            session.close()
            overhead = (statistics.median(through) / statistics.median(raw) - 1) * 100
            rows.append((name, "kernel Session.infer", through, overhead))
            rows.append((name, "raw runtime", raw, None))
        asyncio.run(k.shutdown())
    print(f"yolov3-tiny 416x416, batch 1, {args.iterations} iterations after {args.warmup} warm-up\n")
    print("| backend | path | median ms | p90 ms | overhead |")
    print("|---|---|---:|---:|---:|")
    for name, path, times, overhead in rows:
        extra = f"{overhead:+.1f} %" if overhead is not None else ""
        print(f"| {name} | {path} | {statistics.median(times):.2f} | {p90(times):.2f} | {extra} |")


if __name__ == "__main__":
    main()
