"""What tritonclient sees of one model, over HTTP and gRPC; prints JSON.

Runs inside tritonclient's own environment:
`python triton_zoo.py HTTP_ADDR GRPC_ADDR MODEL present|gone`. With `present` it reads the
repository index and the model's metadata and infers on a fixed input (returned too, so the
test can run the same input through the runtime); with `gone` it records what the index
and the model's routes answer instead.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from triton_results import array, error

X = (np.arange(3 * 8 * 8, dtype=np.float32).reshape(1, 3, 8, 8) % 17) / 8 - 1


def infer_input(module, name: str, binary: bool | None = None):
    tensor = module.InferInput(name, list(X.shape), "FP32")
    if binary is None:
        tensor.set_data_from_numpy(X)
    else:
        tensor.set_data_from_numpy(X, binary_data=binary)
    return [tensor]


def present(http_addr: str, grpc_addr: str, model: str) -> dict[str, Any]:
    h = httpclient.InferenceServerClient(http_addr)
    g = grpcclient.InferenceServerClient(grpc_addr)
    meta = h.get_model_metadata(model)
    name, output = meta["inputs"][0]["name"], meta["outputs"][0]["name"]
    r: dict[str, Any] = {
        "http_index": h.get_model_repository_index(),
        "grpc_index": g.get_model_repository_index(as_json=True).get("models", []),
        "http_metadata": meta,
        "grpc_metadata": g.get_model_metadata(model, as_json=True),
        "http_binary": array(h.infer(model, infer_input(httpclient, name, True)).as_numpy(output)),
        "http_json": array(h.infer(model, infer_input(httpclient, name, False),
                                   outputs=[httpclient.InferRequestedOutput(output, binary_data=False)])
                           .as_numpy(output)),
        "grpc": array(g.infer(model, infer_input(grpcclient, name)).as_numpy(output)),
        "http_ready": h.is_model_ready(model),
        "grpc_ready": g.is_model_ready(model),
        "x": array(X),
    }
    h.close()
    g.close()
    return r


def gone(http_addr: str, grpc_addr: str, model: str) -> dict[str, Any]:
    h = httpclient.InferenceServerClient(http_addr)
    g = grpcclient.InferenceServerClient(grpc_addr)
    r = {
        "http_index": h.get_model_repository_index(),
        "grpc_index": g.get_model_repository_index(as_json=True).get("models", []),
        "http_metadata": error(lambda: h.get_model_metadata(model)),
        "grpc_metadata": error(lambda: g.get_model_metadata(model)),
        "http_infer": error(lambda: h.infer(model, infer_input(httpclient, "input", True))),
        "grpc_infer": error(lambda: g.infer(model, infer_input(grpcclient, "input"))),
    }
    h.close()
    g.close()
    return r


def main() -> None:
    http_addr, grpc_addr, model, phase = sys.argv[1:5]
    check = {"present": present, "gone": gone}[phase]
    json.dump(check(http_addr, grpc_addr, model), sys.stdout)


if __name__ == "__main__":
    main()
