"""Across plugins: a model uploaded to the zoo is listed and inferable over the Open Inference
Protocol at once, with tritonclient over REST and gRPC, and leaves OIP when the zoo deletes it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import Server, free_port
from tests.oip.oip_support import run_client
from tests.zoo.zoo_archives import INPUT_SHAPE, archive, classifier_onnx
from tests.zoo.zoo_servers import SECRET, first_admin

MODEL = "flowers"
ZOO = "acme/vision"
QUALIFIED = f"zoo.acme.vision.{MODEL}"


class Servers:
    def __init__(self, server: Server, grpc_port: int) -> None:
        self.server = server
        self.http_addr = f"127.0.0.1:{server.port}"
        self.grpc_addr = f"127.0.0.1:{grpc_port}"
        self.zoo = httpx.Client(base_url=f"{server.url}/zoo/v1/public", timeout=30,
                                headers={"token": first_admin(server)})

    def close(self) -> None:
        self.zoo.close()

    def triton(self, phase: str) -> dict:
        return run_client("triton_zoo.py", self.http_addr, self.grpc_addr, MODEL, phase)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    home = tmp_path_factory.mktemp("zoo-oip")
    (home / "zoo" / ZOO).mkdir(parents=True)  # an empty zoo, as an operator makes one
    grpc_port = free_port()
    server = Server(
        ["--plugins", "zoo,oip", "--zoo-dir", str(home / "zoo"), "--model-dir", str(home / "models"),
         "--token-secret", SECRET, "--oip-grpc-port", str(grpc_port)],
        home,
    ).wait_ready()
    try:
        with closing(Servers(server, grpc_port)) as servers:
            yield servers
    finally:
        server.stop()
    assert "Traceback" not in server.output()


def names(index: list[dict]) -> set[str]:
    return {m["name"] for m in index}


def as_array(value: dict) -> np.ndarray:
    return np.array(value["data"], dtype=value["dtype"]).reshape(value["shape"])


def test_a_zoo_upload_is_served_over_oip_until_the_zoo_deletes_it(servers: Servers) -> None:
    before = servers.triton("gone")
    assert MODEL not in names(before["http_index"]) | names(before["grpc_index"])

    binary = classifier_onnx()
    uploaded = servers.zoo.post(f"/models/{ZOO}", files={"file": (f"{MODEL}.zip", archive(MODEL, binary))})
    assert uploaded.status_code == 201, uploaded.text

    seen = servers.triton("present")
    for index in (seen["http_index"], seen["grpc_index"]):
        assert MODEL in names(index)
    assert seen["http_ready"] is True and seen["grpc_ready"] is True
    assert seen["http_metadata"]["inputs"] == [{"name": "input", "datatype": "FP32", "shape": list(INPUT_SHAPE)}]
    assert seen["http_metadata"]["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": [1, 3]}]
    assert seen["grpc_metadata"]["inputs"][0]["shape"] == [str(d) for d in INPUT_SHAPE]

    x = as_array(seen["x"])
    want = ort.InferenceSession(binary, providers=["CPUExecutionProvider"]).run(["probs"], {"input": x})[0]
    for path in ("http_binary", "http_json", "grpc"):
        np.testing.assert_array_equal(as_array(seen[path]), want, err_msg=path)
    # The qualified name answers too, as every registry name does.
    qualified = httpx.get(f"{servers.server.url}/v2/models/{QUALIFIED}")
    assert qualified.status_code == 200 and qualified.json()["name"] == QUALIFIED

    deleted = servers.zoo.delete(f"/models/{ZOO}/{MODEL}")
    assert deleted.status_code == 200, deleted.text

    after = servers.triton("gone")
    assert MODEL not in names(after["http_index"]) | names(after["grpc_index"])
    for where in ("http_metadata", "http_infer"):
        assert after[where]["status"] == "404", (where, after[where])
        assert MODEL in after[where]["message"]
    for where in ("grpc_metadata", "grpc_infer"):
        assert after[where]["status"] == "StatusCode.NOT_FOUND", (where, after[where])
