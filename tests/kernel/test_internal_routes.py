"""The kernel's own routes under /-/, metrics, docs and request ids."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from litestar import post
from litestar.params import JSONBody
from litestar.testing import TestClient

import kernel
from tests.kernel.test_registry import MatrixBackend, Runner

SECRET = "q" * 40


@pytest.fixture
def client(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    np.save(folder / "double.npy", 2 * np.eye(3))
    MatrixBackend.gate = None
    k = kernel.create_kernel(
        [], extra={"runner": Runner()}, backends={"matrix": MatrixBackend},
        options={"kernel": {"state_dir": str(tmp_path / "s"), "model_dir": [str(folder)],
                            "token_secret": SECRET}},
    )
    with TestClient(k.app) as client:
        client.kernel = k
        client.models = folder
        yield client


def test_health_ready_and_plugins(client):
    assert client.get("/-/health").json() == {"status": "ok"}
    assert client.get("/-/ready").json() == {"status": "ready"}
    plugins = {p["name"]: p for p in client.get("/-/plugins").json()}
    assert plugins["runner"]["kind"] == "plugin" and plugins["runner"]["hooks"] == ["kernel_routes"]
    assert plugins["matrix"]["kind"] == "backend"


def test_models_and_admin_routes(client):
    (model,) = client.get("/-/models").json()
    assert model["name"] == "dir.double" and model["state"] == "available"
    assert model["backend"] == "matrix" and model["backend_reason"].startswith("reads npy")
    assert client.post("/-/models/double/load").status_code == 401
    reader = client.kernel.auth.tokens.issue("ops", ["oip"], ttl=60)
    assert client.post("/-/models/double/load", headers={"Authorization": f"Bearer {reader}"}).status_code == 403
    admin = {"Authorization": f"Bearer {client.kernel.auth.tokens.issue('ops', ['admin'], ttl=60)}"}
    assert client.post("/-/models/double/load", headers=admin).json()["state"] == "ready"
    assert client.post("/-/models/double/unload", headers=admin).json()["state"] == "available"
    assert client.post("/-/models/nosuch/load", headers=admin).status_code == 404
    np.save(client.models / "triple.npy", 3 * np.eye(3))
    names = [m["name"] for m in client.post("/-/models/rescan", headers=admin).json()]
    assert names == ["dir.double", "dir.triple"]


def test_metrics_count_requests_inference_and_loaded_models(client):
    client.post("/run/double")
    client.post("/run/double")
    text = client.get("/-/metrics").text
    assert 'kernel_http_requests_total{method="POST",plugin="runner",route="/run/{name}",status="201"} 2.0' in text
    assert 'kernel_inference_duration_seconds_count{model="dir.double"} 2.0' in text
    assert "kernel_models_loaded 1.0" in text


def test_requests_no_route_matches_get_an_id_a_log_line_and_one_metric_series(client, caplog):
    caplog.set_level(logging.INFO, logger="kernel.access")
    for path in ("/nosuch/1", "/nosuch/2"):
        assert "x-request-id" in client.get(path).headers
    answer = client.delete("/-/health", headers={"X-Request-ID": "wrong-method"})
    assert answer.status_code == 405 and answer.headers["x-request-id"] == "wrong-method"
    assert sum('"GET /nosuch/' in r.getMessage() for r in caplog.records) == 2
    text = client.get("/-/metrics").text
    assert 'kernel_http_requests_total{method="GET",plugin="",route="(unmatched)",status="404"} 2.0' in text
    assert 'route="(unmatched)",status="405"} 1.0' in text


def test_docs_and_openapi(client):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/run/{name}" in schema["paths"] and "/-/models" in schema["paths"]


def test_garbage_gets_a_4xx_json_error_and_the_server_keeps_serving(client):
    answer = client.post("/-/models/double/load", content=b"\xff\xfe", headers={"Authorization": "Bearer \x00"})
    assert answer.status_code == 401
    assert client.get("/-/nosuch").json() == {"detail": "Not Found"}
    assert client.delete("/-/health").status_code == 405
    assert client.get("/-/health").status_code == 200


def test_a_json_body_that_is_not_utf8_is_a_400(tmp_path):
    @post("/echo", sync_to_thread=False)
    def echo(data: JSONBody[dict]) -> dict:
        return data

    class Echo:
        @kernel.hookimpl
        def kernel_routes(self, kernel):
            return [echo]

    k = kernel.create_kernel([], extra={"echo": Echo()}, options={"kernel": {"state_dir": str(tmp_path)}})
    with TestClient(k.app) as client:
        answer = client.post("/echo", content=b'{"a": "\xff"}', headers={"content-type": "application/json"})
        assert answer.status_code == 400
        assert answer.json() == {"detail": "the request body is not valid UTF-8 (invalid start byte)"}
        assert client.post("/echo", json={"a": "é"}).json() == {"a": "é"}


def test_every_log_line_of_a_request_carries_its_id(client, caplog):
    caplog.set_level(logging.INFO)
    from kernel.logs import _RequestIdFilter

    for handler in [caplog.handler]:
        handler.addFilter(_RequestIdFilter())
    answer = client.post("/run/double", headers={"X-Request-ID": "abc-123"})
    assert answer.headers["x-request-id"] == "abc-123"
    lines = [r for r in caplog.records if r.name in ("kernel.registry", "kernel.access")]
    assert {r.name for r in lines} == {"kernel.registry", "kernel.access"}
    assert all(r.request_id == "abc-123" for r in lines)
    generated = client.get("/-/health", headers={"X-Request-ID": "bad id with spaces"}).headers["x-request-id"]
    assert generated != "bad id with spaces" and len(generated) == 16
