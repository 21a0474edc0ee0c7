"""Drives a server with tritonclient (HTTP and gRPC, sync and asyncio); prints JSON results.

Runs inside tritonclient's own environment: `python triton_checks.py HTTP_ADDR GRPC_ADDR`.
Each check records what the client saw (values, arrays, or the error it raised), so the
test can assert on it and compare numbers with the runtime run in the test's process.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from triton_results import array, error
from tritonclient.utils import triton_to_np_dtype

X = np.arange(8, dtype=np.float32).reshape(2, 4) / 4 - 1
KINDS = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
         "FP16", "FP32", "FP64", "BYTES"]


def kinds_inputs() -> dict[str, np.ndarray]:
    base = np.arange(6).reshape(2, 3)
    out = {}
    for name in KINDS:
        if name == "BOOL":
            out[name] = base % 2 == 0
        elif name == "BYTES":
            out[name] = np.array([f"s{i}-ü".encode() for i in range(6)], dtype=object).reshape(2, 3)
        else:
            out[name] = (base + 1).astype(triton_to_np_dtype(name)) * (1 if name.startswith("U") else -1)
    return out


def inputs(module, x: np.ndarray, binary: bool | None = None):
    tensor = module.InferInput("x", list(x.shape), "FP32")
    if binary is None:
        tensor.set_data_from_numpy(x)
    else:
        tensor.set_data_from_numpy(x, binary_data=binary)
    return [tensor]


def typed_contents(addr: str) -> dict[str, Any]:
    """A ModelInfer with typed `contents` instead of raw bytes, through the raw stub."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="affine")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend(X.reshape(-1).tolist())
    with grpc.insecure_channel(addr) as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        short = service_pb2.ModelInferRequest(model_name="affine")
        tensor = short.inputs.add(name="x", datatype="FP32", shape=[2, 4])
        tensor.contents.fp32_contents.extend([1.0, 2.0])
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(short)
            short_error = {"status": "no error"}
        except grpc.RpcError as exc:
            short_error = {"status": str(exc.code()), "message": exc.details()}
    y = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(list(answer.outputs[0].shape))
    return {"y": array(y), "short": short_error}


def http_checks(addr: str) -> dict[str, Any]:
    c = httpclient.InferenceServerClient(addr)
    r: dict[str, Any] = {
        "live": c.is_server_live(),
        "ready": c.is_server_ready(),
        "server": c.get_server_metadata(),
        "ready_before_load": c.is_model_ready("affine"),
    }
    c.load_model("affine")
    r["ready_after_load"] = c.is_model_ready("affine")
    r["ready_v1"] = c.is_model_ready("affine", "1")
    r["metadata"] = c.get_model_metadata("affine")
    r["index"] = c.get_model_repository_index()
    binary = c.infer("affine", inputs(httpclient, X, True))
    r["binary"] = {n: array(binary.as_numpy(n)) for n in ("y", "total")}
    r["binary_response"] = binary.get_response()
    as_json = c.infer("affine", inputs(httpclient, X, False),
                      outputs=[httpclient.InferRequestedOutput("y", binary_data=False)], request_id="req-7")
    r["json"] = array(as_json.as_numpy("y"))
    r["json_response"] = as_json.get_response()
    r["v2"] = array(c.infer("versioned", inputs(httpclient, X, True), model_version="2").as_numpy("y"))
    r["latest"] = array(c.infer("versioned", inputs(httpclient, X, True)).as_numpy("y"))
    for binary_data in (True, False):
        tensors = []
        for name, value in kinds_inputs().items():
            tensor = httpclient.InferInput(f"in_{name}", [2, 3], name)
            tensor.set_data_from_numpy(value, binary_data=binary_data)
            tensors.append(tensor)
        outs = [httpclient.InferRequestedOutput(f"out_{n}", binary_data=binary_data) for n in KINDS]
        result = c.infer("kinds", tensors, outputs=outs)
        r[f"kinds_{'binary' if binary_data else 'json'}"] = {n: array(result.as_numpy(f"out_{n}")) for n in KINDS}
    r["bad_shape"] = error(lambda: c.infer("affine", inputs(httpclient, np.zeros((2, 3), np.float32), True)))
    r["bad_datatype"] = error(lambda: c.infer("affine", [_fp64(httpclient)]))
    r["unknown_model"] = error(lambda: c.get_model_metadata("no-such-model"))
    r["model_config"] = error(lambda: c.get_model_config("affine"))
    c.unload_model("affine")
    r["ready_after_unload"] = c.is_model_ready("affine")
    r["index_after_unload"] = c.get_model_repository_index()
    c.close()
    return r


def _fp64(module):
    tensor = module.InferInput("x", [2, 4], "FP64")
    tensor.set_data_from_numpy(X.astype(np.float64))
    return tensor


def grpc_checks(addr: str) -> dict[str, Any]:
    c = grpcclient.InferenceServerClient(addr)
    c.unload_model("versioned")  # the HTTP checks used it
    r: dict[str, Any] = {
        "live": c.is_server_live(),
        "ready": c.is_server_ready(),
        "server": c.get_server_metadata(as_json=True),
        "ready_before_load": c.is_model_ready("versioned", "2"),
    }
    c.load_model("versioned")
    r["ready_after_load"] = c.is_model_ready("versioned", "2")
    r["metadata"] = c.get_model_metadata("versioned", as_json=True)
    r["index"] = c.get_model_repository_index(as_json=True)
    result = c.infer("affine", inputs(grpcclient, X))
    r["raw"] = {n: array(result.as_numpy(n)) for n in ("y", "total")}
    only = c.infer("affine", inputs(grpcclient, X), outputs=[grpcclient.InferRequestedOutput("total")])
    r["only_total"] = sorted(o["name"] for o in only.get_response(as_json=True)["outputs"])
    r["v2"] = array(c.infer("versioned", inputs(grpcclient, X), model_version="2").as_numpy("y"))
    tensors = []
    for name, value in kinds_inputs().items():
        tensor = grpcclient.InferInput(f"in_{name}", [2, 3], name)
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    result = c.infer("kinds", tensors)
    r["kinds"] = {n: array(result.as_numpy(f"out_{n}")) for n in KINDS}
    r["bad_shape"] = error(lambda: c.infer("affine", inputs(grpcclient, np.zeros((2, 3), np.float32))))
    r["bad_datatype"] = error(lambda: c.infer("affine", [_fp64(grpcclient)]))
    r["unknown_model"] = error(lambda: c.get_model_metadata("no-such-model"))
    r["model_config"] = error(lambda: c.get_model_config("affine"))
    r["typed"] = typed_contents(addr)
    c.unload_model("versioned")
    r["ready_after_unload"] = c.is_model_ready("versioned", "2")
    # Triton answers an unknown model or version not ready rather than failing the call
    r["ready_unknown"] = [c.is_model_ready("no-such-model"), c.is_model_ready("versioned", "7")]
    c.close()
    return r


async def aio_checks(http_addr: str, grpc_addr: str) -> dict[str, Any]:
    h = httpaio.InferenceServerClient(http_addr)
    g = grpcaio.InferenceServerClient(grpc_addr)
    try:
        r: dict[str, Any] = {"http_live": await h.is_server_live(), "grpc_live": await g.is_server_live()}
        results = await asyncio.gather(
            h.infer("affine", inputs(httpclient, X, True)),
            g.infer("affine", inputs(grpcclient, X)),
        )
        r["http"] = array(results[0].as_numpy("y"))
        r["grpc"] = array(results[1].as_numpy("y"))
        r["grpc_metadata"] = await g.get_model_metadata("affine", as_json=True)
    finally:
        await h.close()
        await g.close()
    return r


def main() -> None:
    http_addr, grpc_addr = sys.argv[1], sys.argv[2]
    results = {
        "http": http_checks(http_addr),
        "grpc": grpc_checks(grpc_addr),
        "aio": asyncio.run(aio_checks(http_addr, grpc_addr)),
        "x": array(X),
    }
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
