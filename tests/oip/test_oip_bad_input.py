"""Bad requests get a 400 / INVALID_ARGUMENT naming the tensor, and the server carries on."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from kernel_oip.proto import grpc_service_pb2 as pb
from kernel_oip.proto import grpc_service_pb2_grpc as pb_grpc

from kernel import DATATYPES
from tests.conftest import Server
from tests.oip.oip_models import kinds_inputs, repository
from tests.oip.oip_support import start_server

X = np.arange(8, dtype=np.float32).reshape(2, 4)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int]]:
    started = start_server(tmp_path_factory.mktemp("home"), repository(tmp_path_factory.mktemp("models")))
    yield started
    started[0].stop()  # first: a failed check below must not leave the server running
    assert "Traceback" not in started[0].output()


@pytest.fixture(scope="module")
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0].url, timeout=10) as client:
        yield client


def binary_request(header: dict, payload: bytes, length: str | None = None) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + payload, {"Inference-Header-Content-Length": length or str(len(head))}


def x_input(**extra) -> dict:
    return {"name": "x", "shape": [2, 4], "datatype": "FP32", **extra}


CASES = {
    "not json": (b"{nope", {}, "the request is not valid JSON"),
    "no inputs": (b"{}", {}, "invalid request: Object missing required field `inputs`"),
    "unknown input": (json.dumps({"inputs": [x_input(name="z", data=[0] * 8)]}).encode(), {},
                      "unknown input 'z'; the model takes ['x']"),
    "missing input": (b'{"inputs": []}', {}, "missing input 'x'"),
    "twice": (json.dumps({"inputs": [x_input(data=[0] * 8), x_input(data=[0] * 8)]}).encode(), {},
              "input 'x' is given twice"),
    "datatype": (json.dumps({"inputs": [x_input(datatype="INT32", data=[0] * 8)]}).encode(), {},
                 "input 'x': expected datatype FP32, got INT32"),
    "unsupported datatype": (json.dumps({"inputs": [x_input(datatype="BF16", data=[0] * 8)]}).encode(), {},
                             "input 'x': unsupported datatype 'BF16'; expected FP32"),
    "shape": (json.dumps({"inputs": [x_input(shape=[2, 5], data=[0] * 10)]}).encode(), {},
              "input 'x': expected shape [-1, 4] (-1 is any size), got [2, 5]"),
    "count": (json.dumps({"inputs": [x_input(data=[1, 2, 3])]}).encode(), {},
              "input 'x': 3 elements of data, expected 8 for shape [2, 4]"),
    "ragged": (json.dumps({"inputs": [x_input(data=[[1, 2, 3, 4], [5]])]}).encode(), {},
               "input 'x': data is not a regular array of FP32 values"),
    "text for numbers": (json.dumps({"inputs": [x_input(data=["a"] * 8)]}).encode(), {},
                         "input 'x': FP32 data must be JSON numbers; Expected `float`, got `str` - at `data[0]`"),
    "no data": (json.dumps({"inputs": [x_input()]}).encode(), {}, "input 'x' has no data"),
    "binary short": (*binary_request({"inputs": [x_input(parameters={"binary_data_size": 16})]}, X.tobytes()[:16]),
                     "input 'x': 16 bytes of data, expected 32 for shape [2, 4] of FP32"),
    "binary past end": (*binary_request({"inputs": [x_input(parameters={"binary_data_size": 64})]}, X.tobytes()),
                        "input 'x': binary_data_size 64 runs past the end of the request (32 bytes left)"),
    "binary left over": (*binary_request({"inputs": [x_input(parameters={"binary_data_size": 32})]}, X.tobytes() + b"1234"),
                         "the request holds 4 bytes of binary data that no input's binary_data_size claims"),
    "header length": (*binary_request({"inputs": []}, b"", length="999"),
                      "Inference-Header-Content-Length '999' does not fit a body of 14 bytes"),
    "unknown output": (json.dumps({"inputs": [x_input(data=[0] * 8)], "outputs": [{"name": "nope"}]}).encode(), {},
                       "unknown output 'nope'; the model gives ['total', 'y']"),
    "classification": (json.dumps({"inputs": [x_input(data=[0] * 8)],
                                   "outputs": [{"name": "y", "parameters": {"classification": 2}}]}).encode(), {},
                       "output 'y': the classification extension is not supported"),
}


@pytest.mark.parametrize("case", CASES)
def test_rest_bad_request_is_a_400_naming_the_problem(http, case):
    body, headers, message = CASES[case]
    answer = http.post("/v2/models/affine/infer", content=body, headers=headers)
    assert (answer.status_code, answer.json()) == (400, {"error": message})


def kinds_request(**data: Any) -> dict:
    """A JSON request to the kinds model: valid data for every input but those given."""
    inputs = []
    for kind, value in kinds_inputs().items():
        flat = [v.decode() for v in value.reshape(-1)] if kind == "BYTES" else value.reshape(-1).tolist()
        inputs.append({"name": f"in_{kind}", "shape": [2, 3], "datatype": kind, "data": data.get(kind, flat)})
    return {"inputs": inputs}


def must(kind: str, expected: str) -> str:
    return f"input 'in_{kind}': {kind} data must be JSON {expected}; "


BOOL, NUMBERS, STRINGS = "true or false", "numbers", "strings"
#: JSON data that NumPy would coerce, each with the error naming the tensor and its datatype's JSON type.
JSON_DATA = {
    "BOOL from strings": ("BOOL", ["false"] * 6, must("BOOL", BOOL) + "Expected `bool`, got `str` - at `data[0]`"),
    "BOOL from integers": ("BOOL", [1, 0, 1, 0, 1, 0], must("BOOL", BOOL) + "Expected `bool`, got `int` - at `data[0]`"),
    "FP32 null": ("FP32", [1.5, None, 0, 0, 0, 0], must("FP32", NUMBERS) + "Expected `float`, got `null` - at `data[1]`"),
    "FP64 bool": ("FP64", [1.5, True, 0, 0, 0, 0], must("FP64", NUMBERS) + "Expected `float`, got `bool` - at `data[1]`"),
    "FP16 strings": ("FP16", ["1"] * 6, must("FP16", NUMBERS) + "Expected `float`, got `str` - at `data[0]`"),
    "INT8 floats": ("INT8", [1.9] * 6, must("INT8", "integers from -128 to 127") + "Expected `int`, got `float` - at `data[0]`"),
    "INT8 strings": ("INT8", ["7"] * 6, must("INT8", "integers from -128 to 127") + "Expected `int`, got `str` - at `data[0]`"),
    "INT8 too large": ("INT8", [127, 128, 0, 0, 0, 0],
                       must("INT8", "integers from -128 to 127") + "Expected `int` <= 127 - at `data[1]`"),
    "INT32 bool nested": ("INT32", [[1, 2, 3], [4, 5, True]], must("INT32", "integers from -2147483648 to 2147483647")
                          + "Expected `int`, got `bool` - at `data[1][2]`"),
    "UINT8 negative": ("UINT8", [-1] * 6, must("UINT8", "integers from 0 to 255") + "Expected `int` >= 0 - at `data[0]`"),
    "UINT64 too large": ("UINT64", [[0, 1, 2], [3, 2**64, 5]], must("UINT64", "integers from 0 to 18446744073709551615")
                         + "18446744073709551616 is out of range - at `data[1][1]`"),
    "FP16 too large": ("FP16", [1, 2, 3, 70000, 0, 0], must("FP16", NUMBERS) + "70000.0 is out of range - at `data[3]`"),
    "FP32 too large": ("FP32", [[1, 0, 0], [0, -1e39, 0]], must("FP32", NUMBERS) + "-1e+39 is out of range - at `data[1][1]`"),
    "BYTES objects": ("BYTES", [{"ab": 1, "cd": 2}, {"x": 1, "y": 2}, {"z": 1, "w": 2}],
                      must("BYTES", STRINGS) + "Expected `str`, got `object` - at `data[0]`"),
    "BYTES numbers": ("BYTES", [1] * 6, must("BYTES", STRINGS) + "Expected `str`, got `int` - at `data[0]`"),
    "BYTES ragged": ("BYTES", [["a", "b", "c", "d"], ["e", "f"]],
                     "input 'in_BYTES': data is not a regular array of BYTES values"),
    "deeper than the shape": ("FP32", [[[1, 2, 3]], [[4, 5, 6]]],
                              "input 'in_FP32': data is nested deeper than its shape [2, 3]"),
}


@pytest.mark.parametrize("case", JSON_DATA)
def test_json_data_of_the_wrong_type_is_a_400_naming_the_type(http, case):
    kind, data, message = JSON_DATA[case]
    answer = http.post("/v2/models/kinds/infer", json=kinds_request(**{kind: data}))
    assert (answer.status_code, answer.json()) == (400, {"error": message})


def test_json_data_at_the_edges_of_each_datatype_reaches_the_model_exactly(http):
    edges = {
        "BOOL": [[True, False, True], [False, False, True]],
        "INT8": [-128, 127, 0, -1, 1, 2],
        "UINT8": [0, 255, 1, 2, 3, 4],
        "INT64": [-2**63, 2**63 - 1, 0, -1, 1, 2],
        "UINT64": [0, 2**64 - 1, 1, 2, 3, 4],
        "FP16": [1, -2, 0.5, 0, 65504, -0.25],
        "FP32": [[1, 2.5, -3], [0, 1024, -0.125]],
        "FP64": [1, 1e300, -2.5, 0, 3, 4],
        "BYTES": [["", "ü", "a b"], ["\"quoted\"", "x", "y"]],
    }
    answer = http.post("/v2/models/kinds/infer", json=kinds_request(**edges))
    assert answer.status_code == 200, answer.text
    got = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    for kind, data in edges.items():
        assert got[f"out_{kind}"] == np.array(data, dtype=object).reshape(-1).tolist(), kind


NO_FLOAT = {
    "flat": ("FP64", [1, 2, 3, 4, 5, "BIG"], must("FP64", NUMBERS) + "Number out of range - at `data[5]`"),
    "nested": ("FP64", [[1, 2, 3], ["BIG", 5, 6]], must("FP64", NUMBERS) + "Number out of range - at `data[1][0]`"),
    "integer datatype": ("INT8", [1, 2, 3, 4, 5, "BIG"],
                         must("INT8", "integers from -128 to 127") + "Number out of range - at `data[5]`"),
    "unknown datatype": ("BF16", ["BIG"] * 6,
                         "input 'in_BF16': data must be JSON numbers, booleans or strings; Number out of range - at `data[0]`"),
}


@pytest.mark.parametrize("case", NO_FLOAT)
def test_a_number_no_float_holds_is_a_400_naming_its_input(http, case):
    # 1e400 fails as the body is decoded, before the input's datatype is known to be right
    kind, data, message = NO_FLOAT[case]
    inputs = [{"name": "in_FP32", "shape": [2, 3], "datatype": "FP32", "data": [0] * 6},
              {"name": f"in_{kind}", "shape": [2, 3], "datatype": kind, "data": data}]
    body = json.dumps({"inputs": inputs}).replace('"BIG"', "-1e400").encode()
    answer = http.post("/v2/models/kinds/infer", content=body)
    assert (answer.status_code, answer.json()) == (400, {"error": message})


def test_a_json_string_that_is_not_utf8_is_a_400(http):
    body = json.dumps(kinds_request()).replace('"s0-', '"\xff', 1).encode("latin-1")
    answer = http.post("/v2/models/kinds/infer", content=body)
    assert (answer.status_code, answer.json()) == (400, NOT_UTF8)


NOT_UTF8 = {"error": "the request is not valid JSON: it holds text that is not UTF-8"}
TOO_DEEP = {"error": "the request is not valid JSON: it nests too deeply"}
DEEP = b"[" * 5000 + b"]" * 5000
UNREADABLE = {
    "infer not UTF-8": ("/v2/models/affine/infer", b'{"inputs": [], "id": "\xff"}', NOT_UTF8),
    "load not UTF-8": ("/v2/repository/models/affine/load", b'{"parameters": {"\xff": 1}}', NOT_UTF8),
    "infer too deep": ("/v2/models/affine/infer", b'{"inputs": [{"name": "x", "data": ' + DEEP + b"}]}", TOO_DEEP),
    "index too deep": ("/v2/repository/index", b'{"ready": true, "other": ' + DEEP + b"}", TOO_DEEP),
}


@pytest.mark.parametrize("case", UNREADABLE)
def test_json_the_decoder_cannot_read_is_a_400(http, case):
    path, body, error = UNREADABLE[case]
    answer = http.post(path, content=body)
    assert (answer.status_code, answer.json()) == (400, error)


NOT_SERVED = ["/v2/models/affine/config", "/v2/models/affine/versions/1/stats", "/v2/models/affine/stats",
              "/v2/trace/setting", "/v2/logging", "/v2/systemsharedmemory/status",
              "/v2/cudasharedmemory/region/r/register", "/v2/repository/models/affine/nope", "/v2/health/nope",
              "/v2/models", "/v2/models/affine/versions", "/v2/repository", "/v2/repository/models/affine"]


@pytest.mark.parametrize("path", NOT_SERVED)
def test_paths_under_v2_that_are_not_served_are_404_in_the_protocols_shape(http, path):
    # tritonclient reads `error` from every answer that is not a success
    for method in ("GET", "POST"):
        answer = http.request(method, path)
        assert (answer.status_code, answer.json()) == (404, {"error": f"{method} {path} is not served"})


def test_paths_outside_v2_are_left_to_the_kernel(http):
    answer = http.get("/v2x")
    assert (answer.status_code, answer.json()) == (404, {"detail": "Not Found"})
    assert http.get("/-/ready").status_code == 200


def test_unknown_model_and_version_are_404(http):
    assert http.post("/v2/models/nope/infer", json={"inputs": []}).json() == {"error": "model 'nope' not found"}
    answer = http.get("/v2/models/versioned/versions/9")
    assert (answer.status_code, answer.json()) == (404, {"error": "model 'versioned' has no version '9'"})


def test_gzip_body_and_nested_data_are_served(http):
    body = json.dumps({"inputs": [x_input(data=X.tolist())]}).encode()
    answer = http.post("/v2/models/affine/infer", content=gzip.compress(body), headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 200
    assert answer.json()["outputs"][0]["data"] == (X * 2 + 1).reshape(-1).tolist()
    bomb = http.post("/v2/models/affine/infer", content=b"\x1f\x8bnot gzip", headers={"Content-Encoding": "gzip"})
    assert (bomb.status_code, bomb.json()) == (400, {"error": "the request body is not valid gzip data"})


@pytest.mark.parametrize("padding", range(4))
def test_large_binary_requests_give_exact_answers_whatever_the_header_length(http, padding):
    """Big bodies are read into aligned memory: every header length must still give the same numbers."""
    x = np.random.default_rng(padding).random((6000, 4), dtype=np.float32)
    header = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                          "parameters": {"binary_data_size": x.nbytes}}],
              "outputs": [{"name": "y", "parameters": {"binary_data": True}}], "id": "p" * padding}
    body, headers = binary_request(header, x.tobytes())
    answer = http.post("/v2/models/affine/infer", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    length = int(answer.headers["Inference-Header-Content-Length"])
    y = np.frombuffer(answer.content[length:], np.float32).reshape(x.shape)
    np.testing.assert_array_equal(y, x * 2 + 1)


def test_a_header_length_that_is_not_a_count_is_a_400(http):
    for value in ("ten", "-1"):
        answer = http.post("/v2/models/affine/infer", content=b"{}", headers={"Inference-Header-Content-Length": value})
        assert (answer.status_code, answer.json()) == (
            400, {"error": f"Inference-Header-Content-Length {value!r} is not a byte count"})


@pytest.fixture(scope="module")
def stub(server) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server[1]}") as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def grpc_error(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return info.value.code(), info.value.details()


def test_grpc_raw_contents_checked(stub):
    request = pb.ModelInferRequest(model_name="affine")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    request.raw_input_contents.append(X.tobytes()[:-1])
    assert grpc_error(stub.ModelInfer, request) == (
        grpc.StatusCode.INVALID_ARGUMENT, "input 'x': 31 bytes of data, expected 32 for shape [2, 4] of FP32")
    request.raw_input_contents.append(b"extra")
    code, message = grpc_error(stub.ModelInfer, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "2 buffers for 1 inputs" in message
    negative = pb.ModelInferRequest(model_name="affine")
    negative.inputs.add(name="x", datatype="FP32", shape=[-2, 4])
    negative.raw_input_contents.append(b"")
    assert grpc_error(stub.ModelInfer, negative)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_refuses_what_it_cannot_honour_as_rest_does(stub):
    def request(**kinds: bool) -> pb.ModelInferRequest:
        r = pb.ModelInferRequest(model_name="affine")
        x = r.inputs.add(name="x", datatype="FP32", shape=[2, 4])
        r.raw_input_contents.append(X.tobytes())
        if kinds.get("contents"):
            x.contents.fp32_contents.extend(X.reshape(-1).tolist())
        if kinds.get("input_shm"):
            x.parameters["shared_memory_region"].string_param = "region"
        out = r.outputs.add(name="y")
        if kinds.get("classification"):
            out.parameters["classification"].int64_param = 2
        if kinds.get("output_shm"):
            out.parameters["shared_memory_region"].string_param = "region"
        return r

    for kind, message in (("contents", "input 'x' has both contents and raw_input_contents"),
                          ("input_shm", "input 'x': shared memory is not supported; send the data"),
                          ("classification", "output 'y': the classification extension is not supported"),
                          ("output_shm", "output 'y': shared memory is not supported")):
        assert grpc_error(stub.ModelInfer, request(**{kind: True})) == (grpc.StatusCode.INVALID_ARGUMENT, message)


#: The typed contents field of each datatype (FP16 has none: it travels as raw bytes only).
FIELDS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
          "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
          "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def typed_request(**data: tuple[str, list]) -> pb.ModelInferRequest:
    """A ModelInfer to the typed model, every input in its typed contents, but those given as (field, values)."""
    request = pb.ModelInferRequest(model_name="typed")
    for kind, field in FIELDS.items():
        field, values = data.get(kind, (field, kinds_inputs()[kind].reshape(-1).tolist()))
        tensor = request.inputs.add(name=f"in_{kind}", datatype=kind, shape=[2, 3])
        getattr(tensor.contents, field).extend(values)
    return request


TYPED_OUT_OF_RANGE = {
    "INT8": ([1, 2, 3, 400, 5, 6], "integers from -128 to 127", "400 is out of range - at `int_contents[3]`"),
    "INT16": ([-40000, 2, 3, 4, 5, 6], "integers from -32768 to 32767", "-40000 is out of range - at `int_contents[0]`"),
    "UINT8": ([1, 2, 3, 4, 5, 256], "integers from 0 to 255", "256 is out of range - at `uint_contents[5]`"),
    "UINT16": ([1, 70000, 3, 4, 5, 6], "integers from 0 to 65535", "70000 is out of range - at `uint_contents[1]`"),
}


@pytest.mark.parametrize("kind", TYPED_OUT_OF_RANGE)
def test_grpc_typed_contents_out_of_the_datatypes_range_are_refused(stub, kind):
    # protobuf has no 8- or 16-bit fields: a cast would wrap 400 to -112 as INT8
    values, expected, problem = TYPED_OUT_OF_RANGE[kind]
    assert grpc_error(stub.ModelInfer, typed_request(**{kind: (FIELDS[kind], values)})) == (
        grpc.StatusCode.INVALID_ARGUMENT, f"input 'in_{kind}': {kind} data must be {expected}; {problem}")


def test_grpc_typed_contents_at_the_edges_of_each_datatype_reach_the_model_exactly(stub):
    edges = {
        "BOOL": [True, False, True, False, False, True],
        "INT8": [-128, 127, 0, -1, 1, 2], "INT16": [-32768, 32767, 0, -1, 1, 2],
        "INT32": [-2**31, 2**31 - 1, 0, -1, 1, 2], "INT64": [-2**63, 2**63 - 1, 0, -1, 1, 2],
        "UINT8": [0, 255, 1, 2, 3, 4], "UINT16": [0, 65535, 1, 2, 3, 4],
        "UINT32": [0, 2**32 - 1, 1, 2, 3, 4], "UINT64": [0, 2**64 - 1, 1, 2, 3, 4],
        "FP32": [3.4028234663852886e38, -1.5, float("inf"), 0, 1, 2], "FP64": [1e300, -2.5, float("-inf"), 0, 1, 2],
    }
    answer = stub.ModelInfer(typed_request(**{kind: (FIELDS[kind], data) for kind, data in edges.items()}), timeout=10)
    got = dict(zip((o.name for o in answer.outputs), answer.raw_output_contents))
    for kind, data in edges.items():
        dtype = DATATYPES[kind]
        np.testing.assert_array_equal(np.frombuffer(got[f"out_{kind}"], dtype), np.array(data, dtype), err_msg=kind)


WRONG_FIELD = {
    "FP32 in int_contents": ("affine", "x", "FP32", {"int_contents": [1] * 8},
                             "input 'x': FP32 data must be in fp32_contents, got int_contents"),
    "INT64 in int_contents": ("typed", "in_INT64", "INT64", {"int_contents": [1] * 6},
                              "input 'in_INT64': INT64 data must be in int64_contents, got int_contents"),
    "a second field": ("affine", "x", "FP32", {"int_contents": [1] * 8, "fp32_contents": [1] * 8},
                       "input 'x': FP32 data must be in fp32_contents, got int_contents, fp32_contents"),
    "FP16 typed": ("kinds", "in_FP16", "FP16", {"fp32_contents": [1] * 6},
                   "input 'in_FP16': FP16 data must be in raw_input_contents, got fp32_contents"),
}


@pytest.mark.parametrize("case", WRONG_FIELD)
def test_grpc_typed_contents_in_another_field_than_the_datatypes_are_named(stub, case):
    model, name, kind, fields, message = WRONG_FIELD[case]
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype=kind, shape=[2, 4] if model == "affine" else [2, 3])
    for field, values in fields.items():
        getattr(tensor.contents, field).extend(values)
    assert grpc_error(stub.ModelInfer, request) == (grpc.StatusCode.INVALID_ARGUMENT, message)


#: The RPCs served; the generated service has more.
SERVED_RPCS = {"ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata", "ModelInfer",
               "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"}


def test_grpc_rpcs_not_served_are_unimplemented_naming_the_rpc_and_log_no_warning(server, stub):
    methods = [m for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods if m.name not in SERVED_RPCS]
    assert {"ModelConfig", "ModelStatistics", "ModelStreamInfer", "TraceSetting", "LogSettings"} <= {m.name for m in methods}
    logged = len(server[0].output())
    for method in methods:
        call, request = getattr(stub, method.name), getattr(pb, method.input_type.name)()
        with pytest.raises(grpc.RpcError) as info:
            list(call(iter([request]), timeout=10)) if method.client_streaming else call(request, timeout=10)
        assert (info.value.code(), info.value.details()) == (
            grpc.StatusCode.UNIMPLEMENTED, f"{method.name} is not served"), method.name
    assert not re.search(r"\b(WARNING|ERROR)\b|Traceback", server[0].output()[logged:])


def test_a_grpc_message_that_does_not_decode_is_invalid_argument(server):
    # model_name (field 1) holding bytes that are not UTF-8, and a message cut short
    with grpc.insecure_channel(f"127.0.0.1:{server[1]}") as channel:
        for method, raw in (("ModelInfer", b"\x0a\x01\xff"), ("ModelMetadata", b"\x0a\x05ab"),
                            ("RepositoryModelLoad", b"\x12\x01\xff")):
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}",
                                       request_serializer=lambda data: data, response_deserializer=lambda data: data)
            with pytest.raises(grpc.RpcError) as info:
                call(raw, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert info.value.details().startswith(f"the request is not a valid {method}Request"), method


def test_grpc_good_request_after_bad_ones(stub):
    request = pb.ModelInferRequest(model_name="affine", id="after")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    request.raw_input_contents.append(X.tobytes())
    answer = stub.ModelInfer(request, timeout=10)
    assert answer.id == "after" and [o.name for o in answer.outputs] == ["y", "total"]
    np.testing.assert_array_equal(np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(2, 4), X * 2 + 1)


def test_a_body_limit_past_what_grpc_takes_still_starts_the_server(tmp_path):
    # grpc's message limits are 32-bit; the kernel's --max-body-size is not
    server, grpc_port = start_server(tmp_path / "home", repository(tmp_path / "models"), "--max-body-size", "3000000000")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10).live
    finally:
        server.stop()
