"""Every in-tree feature plugin in one process, on one port (plus OIP's gRPC port): each
answers its own protocol, and /openapi.json describes them all."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import Server, free_port

REPO = Path(__file__).resolve().parent.parent
PLUGINS = ["zoo", "detect", "oip", "jobs", "streams"]


def doubler(path: Path) -> None:
    """y = 2 * x, x of shape [-1, 3]: the smallest real ONNX model."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])], "doubler",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("all")
    models = home / "models"
    models.mkdir()
    doubler(models / "doubler.onnx")
    grpc_port = free_port()
    server = Server(
        ["--plugins", ",".join(PLUGINS), "--model-dir", str(models), "--zoo-dir", str(home / "zoo"),
         "--oip-grpc-port", str(grpc_port), "--jobs-endpoints", str(REPO / "tests" / "jobs" / "endpoints"),
         "--streams-dev-login"],
        home,
    ).wait_ready(60)
    server.grpc_port = grpc_port
    yield server
    server.stop()


def test_all_plugins_are_loaded_and_documented(server):
    loaded = [p["name"] for p in httpx.get(server.url + "/-/plugins").json() if p["kind"] == "plugin"]
    assert loaded == PLUGINS
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    for path in ("/zoo/v1/public/tokens", "/infer", "/detect", "/v2/models/{name}/infer",
                 "/echo", "/worker_job_request", "/token", "/data/{sid}", "/-/models"):
        assert any(p == path or p.startswith(path) for p in paths), path


def test_zoo_answers(server):
    first = httpx.post(server.url + "/zoo/v1/public/tokens", params={"is_admin": "true"})
    assert first.status_code == 200, first.text
    token = first.json() if isinstance(first.json(), str) else next(iter(first.json().values()))
    zoos = httpx.get(server.url + "/zoo/v1/public/zoos/org", headers={"token": str(token)})
    assert zoos.status_code in (200, 400)
    assert httpx.get(server.url + "/zoo/v1/public/zoos/org").status_code == 401


def test_detect_answers(server):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    names = [m["name"] for m in httpx.get(server.url + "/models").json()["models"]]
    assert isinstance(names, list)


def test_oip_answers_over_rest_and_grpc(server):
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
    request = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    answer = httpx.post(server.url + "/v2/models/doubler/infer", json=request).json()
    assert answer["outputs"][0]["data"] == [2.0, 4.0, 6.0]
    with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=5):
        pass


def test_jobs_answers(server):
    endpoints = httpx.get(server.url + "/api/endpoints").json()
    assert "echo" in str(endpoints)


def test_streams_answers(server):
    login = httpx.post(server.url + "/token", data={"username": "u", "password": "u"})
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    assert httpx.post(server.url + "/data/all", headers=headers, files={"entries": b"entry"}).status_code == 201
    assert httpx.get(server.url + "/data/all", headers=headers).content == b"entry"


def test_the_doubler_is_one_model_for_every_plugin(server):
    models = {m["name"]: m for m in httpx.get(server.url + "/-/models").json()}
    assert models["dir.doubler"]["backend"] == "onnxruntime"
    oip_index = httpx.post(server.url + "/v2/repository/index", json={}).json()
    assert any(m["name"] in ("doubler", "dir.doubler") for m in oip_index)
    # detect lists the same registry model, not loaded yet
    (listed,) = [m for m in httpx.get(server.url + "/models").json()["models"] if m["name"] == "doubler"]
    assert listed["framework"] == "onnxruntime"
