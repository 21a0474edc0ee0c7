"""tritonclient (HTTP and gRPC, sync and asyncio) against `kernel serve --plugins oip`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.oip.oip_models import KINDS, kinds_inputs, repository
from tests.oip.oip_support import run_client, start_server


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return repository(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory, models: Path) -> Iterator[dict]:
    """Everything tritonclient saw, from one run of the client script."""
    server, grpc_port = start_server(tmp_path_factory.mktemp("home"), models)
    try:
        yield run_client("triton_checks.py", f"127.0.0.1:{server.port}", f"127.0.0.1:{grpc_port}")
    finally:
        server.stop()


def as_array(value: dict) -> np.ndarray:
    if value["dtype"] == "object":
        return np.array([s.encode() for s in value["data"]], dtype=object).reshape(value["shape"])
    return np.array(value["data"], dtype=value["dtype"]).reshape(value["shape"])


def runtime(model: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """The raw runtime's answer, for comparison."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"x": x})))


def test_health_and_server_metadata(seen):
    for client in ("http", "grpc"):
        assert seen[client]["live"] is True and seen[client]["ready"] is True
        server = seen[client]["server"]
        assert server["name"] == "kernel"
        assert {"binary_tensor_data", "model_repository"} <= set(server["extensions"])
    assert seen["aio"]["http_live"] is True and seen["aio"]["grpc_live"] is True


def test_model_metadata(seen):
    meta = seen["http"]["metadata"]
    assert meta["name"] == "affine" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["y", "total"]
    grpc_meta = seen["grpc"]["metadata"]
    assert grpc_meta["versions"] == ["1", "2"]
    assert grpc_meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert seen["aio"]["grpc_metadata"]["name"] == "affine"


def test_infer_numbers_equal_the_runtime(seen, models):
    x = as_array(seen["x"])
    want = runtime(models / "affine" / "model.onnx", x)
    for got in (seen["http"]["binary"], seen["grpc"]["raw"]):
        for name in ("y", "total"):
            np.testing.assert_array_equal(as_array(got[name]), want[name])
    for got in (seen["http"]["json"], seen["aio"]["http"], seen["aio"]["grpc"], seen["grpc"]["typed"]["y"]):
        np.testing.assert_array_equal(as_array(got), want["y"])
    v2 = runtime(models / "versioned" / "2" / "model.onnx", x)["y"]
    np.testing.assert_array_equal(as_array(seen["http"]["v2"]), v2)
    np.testing.assert_array_equal(as_array(seen["http"]["latest"]), v2)
    np.testing.assert_array_equal(as_array(seen["grpc"]["v2"]), v2)


def test_binary_and_json_answers_as_asked(seen):
    binary = seen["http"]["binary_response"]
    assert all("binary_data_size" in o["parameters"] and "data" not in o for o in binary["outputs"])
    answer = seen["http"]["json_response"]
    assert answer["id"] == "req-7" and answer["model_version"] == "1"
    assert [o["name"] for o in answer["outputs"]] == ["y"] and "data" in answer["outputs"][0]
    assert seen["grpc"]["only_total"] == ["total"]


WHERE = ["kinds_binary", "kinds_json", "kinds"]


@pytest.mark.parametrize("where", WHERE)
def test_every_numeric_datatype_round_trips(seen, where):
    results = seen["grpc" if where == "kinds" else "http"][where]
    assert set(results) == set(KINDS)
    for name, value in kinds_inputs().items():
        if name != "BYTES":
            got = as_array(results[name])
            assert got.dtype == value.dtype, name
            np.testing.assert_array_equal(got, value, err_msg=name)


@pytest.mark.parametrize("where", WHERE)
def test_bytes_round_trip(seen, where):
    results = seen["grpc" if where == "kinds" else "http"][where]
    np.testing.assert_array_equal(as_array(results["BYTES"]), kinds_inputs()["BYTES"])


def test_repository_index_load_and_unload(seen):
    http, grpc = seen["http"], seen["grpc"]
    assert http["ready_before_load"] is False and http["ready_after_load"] is True and http["ready_v1"] is True
    assert http["ready_after_unload"] is False
    states = {(m["name"], m["version"]): m["state"] for m in http["index"]}
    assert states[("affine", "1")] == "READY" and ("kinds", "1") in states
    after = {(m["name"], m["version"]): m for m in http["index_after_unload"]}
    assert after[("affine", "1")]["state"] == "UNAVAILABLE"
    assert grpc["ready_before_load"] is False and grpc["ready_after_load"] is True
    assert grpc["ready_after_unload"] is False and grpc["ready_unknown"] == [False, False]
    assert {"name": "versioned", "version": "2", "state": "READY"}.items() <= next(
        m for m in grpc["index"]["models"] if m["name"] == "versioned" and m["version"] == "2").items()


def test_bad_requests_are_clear_errors(seen):
    http, grpc = seen["http"], seen["grpc"]
    assert http["bad_shape"]["status"] == "400"
    assert "input 'x': expected shape [-1, 4]" in http["bad_shape"]["message"]
    assert grpc["bad_shape"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "input 'x': expected shape [-1, 4]" in grpc["bad_shape"]["message"]
    for client, code in ((http, "400"), (grpc, "StatusCode.INVALID_ARGUMENT")):
        assert client["bad_datatype"]["status"] == code
        assert "input 'x': expected datatype FP32, got FP64" in client["bad_datatype"]["message"]
    assert http["unknown_model"] == {"status": "404", "message": "model 'no-such-model' not found"}
    assert grpc["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    short = grpc["typed"]["short"]
    assert short["status"] == "StatusCode.INVALID_ARGUMENT"
    assert short["message"] == "input 'x': 2 elements of data, expected 8 for shape [2, 4]"


def test_what_is_not_served_is_an_error_tritonclient_reads(seen):
    assert seen["http"]["model_config"] == {"status": "404", "message": "GET /v2/models/affine/config is not served"}
    assert seen["grpc"]["model_config"] == {"status": "StatusCode.UNIMPLEMENTED", "message": "ModelConfig is not served"}
