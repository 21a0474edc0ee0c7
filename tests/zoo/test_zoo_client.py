"""The real DeGirum PySDK (`degirum` from PyPI, in its own environment) against the zoo:
connect, list, load and predict on CPU, with the same answer as onnxruntime itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.clientenv import client_python
from tests.conftest import Server
from tests.realmodels import cache_dir
from tests.zoo.zoo_archives import INPUT_SHAPE, LABELS, classifier_onnx, write_archive
from tests.zoo.zoo_servers import first_admin, start_zoo

DEGIRUM = ["degirum==1.5.0"]
ORT = "onnxruntime==1.20.1"
MODEL = "tiny_classifier--8x8_float_onnx_cpu_1"

CLIENT = """
import json, sys
import numpy as np
import degirum as dg
url, token, model, data = sys.argv[1:5]
try:
    zoo = dg.connect(dg.LOCAL, url, token=token)
    names = zoo.list_models()
    m = zoo.load_model(model)
    result = m(np.load(data))
    print(json.dumps({"models": names, "results": result.results}, default=float))
except Exception as exc:
    print(json.dumps({"error": str(exc)}))
"""


def onnxruntime_library() -> Path:
    """A folder holding ONNX Runtime 1.20.1's `libonnxruntime.so.1`, which PySDK's ONNX
    agent loads; fetched once from the PyPI wheel into the test cache."""
    folder = cache_dir() / ORT.replace("==", "-")
    if (folder / "libonnxruntime.so.1").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    download = folder / "wheel"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.11", ORT, "-d", str(download)], check=False, capture_output=True, text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot download {ORT}: {done.stderr[-400:]}")
    (wheel,) = download.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        member = next(n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime.so.1."))
        partial = folder / "libonnxruntime.so.1.partial"
        partial.write_bytes(z.read(member))
    os.replace(partial, folder / "libonnxruntime.so.1")
    for path in download.iterdir():
        path.unlink()
    download.rmdir()
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, bytes]]:
    root = tmp_path_factory.mktemp("client")
    binary = classifier_onnx()
    write_archive(root / "zoo" / "acme" / "vision", MODEL, binary)
    server = start_zoo(root / "home", root / "zoo")
    try:
        yield server, first_admin(server), binary
    finally:
        server.stop()
        assert "Traceback" not in server.output()


def run_client(served_url: str, token: str, data: Path, home: Path) -> dict:
    python = client_python("degirum", DEGIRUM)
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(home), "LD_LIBRARY_PATH": str(onnxruntime_library())}
    done = subprocess.run(
        [str(python), "-c", CLIENT, served_url, token, MODEL, str(data)],
        check=False, capture_output=True, text=True, timeout=120, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_pysdk_predicts_what_onnxruntime_computes(served, tmp_path: Path) -> None:
    import onnxruntime

    server, token, binary = served
    x = np.random.default_rng(3).normal(size=INPUT_SHAPE).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    answer = run_client(f"{server.url}/acme/vision", token, tmp_path / "x.npy", tmp_path / "home")
    assert "error" not in answer, answer
    assert answer["models"] == [MODEL]

    session = onnxruntime.InferenceSession(binary, providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, {"input": x})
    expected = sorted(enumerate(probs[0]), key=lambda item: -item[1])
    got = answer["results"]
    assert [r["category_id"] for r in got] == [i for i, _ in expected]
    assert [r["label"] for r in got] == [LABELS[str(i)] for i, _ in expected]
    np.testing.assert_allclose([r["score"] for r in got], [p for _, p in expected], rtol=1e-4, atol=1e-6)


def test_pysdk_with_a_wrong_token_cannot_connect(served, tmp_path: Path) -> None:
    server, _, _ = served
    np.save(tmp_path / "x.npy", np.zeros(INPUT_SHAPE, np.float32))
    answer = run_client(f"{server.url}/acme/vision", "dg_not_a_token", tmp_path / "x.npy", tmp_path / "home")
    assert answer["error"].startswith("Unable to connect to server 127.0.0.1:")
    assert "Token is not valid" in answer["error"]
