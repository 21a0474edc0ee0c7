"""The protocol's REST routes (`/v2/...`), with the binary tensor data extension.

A request body is the JSON inference header, followed by the raw bytes of every input
whose `parameters.binary_data_size` says so, when `Inference-Header-Content-Length` gives
the header's length. Answers use the same layout for outputs asked with `binary_data`
(or all of them with the request's `binary_data_output`), as tritonclient expects.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from typing import Any

import msgspec
import numpy as np
from litestar import Request, Response, Router, get, post, route
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath
from litestar.types import ASGIApp, Receive, Scope, Send

import kernel
from kernel import BadRequest, InvalidInput, NotFound, PayloadTooLarge, Unavailable
from kernel_oip.service import (
    INFER,
    READ,
    REPOSITORY,
    JsonData,
    OipService,
    Plan,
    WireTensor,
    check_input_parameters,
)
from kernel_oip.tensors import as_json_data, json_must, raw

HEADER_LENGTH = "inference-header-content-length"
JSON = "application/json"
#: Bodies from this size on are read into aligned memory; smaller ones are cheap to copy.
_ALIGNED_FROM = 64 * 1024
#: Enough for every datatype, and for the SIMD loads of the runtimes.
_ALIGN = 64
#: More than a JSON request to a model of fixed-size inputs takes, written as clients write
#: it: per element (`-1.1754943508222875e-38, `), and for the rest of its header.
_JSON_ELEMENT_BYTES = 32
_JSON_HEADER_BYTES = 64 * 1024
#: JSON from this size on is decoded on the kernel's helper threads, not the event loop.
_OFFLOAD_FROM = 1024 * 1024
#: The most that deflate inflates a byte to.
_INFLATION = 1032


class _Input(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = {}
    #: Checked element by element for the model's datatype once that is known.
    data: Any = None


class _SizedInput(_Input):
    #: Left undecoded until `tensors.from_json` has counted it against the shape.
    data: msgspec.Raw = msgspec.Raw()


#: `data` that is not there, as either kind of input holds it.
_NO_DATA = (None, msgspec.Raw(), msgspec.Raw(b"null"))


class _Output(msgspec.Struct):
    name: str
    parameters: dict[str, Any] = {}


class _InferRequest(msgspec.Struct):
    inputs: list[_Input]
    id: str | None = None
    parameters: dict[str, Any] = {}
    outputs: list[_Output] = []


class _SizedInferRequest(_InferRequest):
    inputs: list[_SizedInput]


class _LoadRequest(msgspec.Struct):
    parameters: dict[str, Any] = {}


class _IndexRequest(msgspec.Struct):
    ready: bool = False


class _Named(msgspec.Struct):
    name: Any = None
    datatype: Any = None


class _NamedInputs(msgspec.Struct):
    """Only what names an input, read again to say whose `data` failed to decode."""

    inputs: list[_Named]


#: msgspec's error for a value in an input's `data`, and where it is below `data`.
_IN_DATA = re.compile(r"(.*) - at `\$\.inputs\[(\d+)\]\.data(.*)`", re.DOTALL)


def _oip_error(status: int, message: str) -> dict[str, str]:
    return {"error": message}


def router(service: OipService) -> Router:
    """Every route, guarded by the kernel's auth when `--oip-auth` is on."""
    config = service.config
    max_body = service.kernel.config.kernel.max_body_size
    # One JSON body decoded at a time, as on the event loop: decoding holds the GIL, so two at
    # once would be no sooner done, and would hold the objects of both.
    decoding = asyncio.Semaphore()

    def guard(scope: str) -> list[Any]:
        if not config.auth:
            return []
        check = kernel.requires(scope)

        async def guarded(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
            await check(connection, handler)
            resource = connection.path_params.get("name", "server")
            await service.check_policy(kernel.bearer_token(connection), scope, resource)

        return [guarded]

    @get("/v2/health/live", sync_to_thread=False)
    def live() -> Response[bytes]:
        return Response(b"", media_type=JSON)

    @get("/v2/health/ready", sync_to_thread=False)
    def ready() -> Response[bytes]:
        if not service.kernel.started:
            raise Unavailable("the server is starting")
        return Response(b"", media_type=JSON)

    @get("/v2", guards=guard(READ), sync_to_thread=False)
    def server_metadata() -> dict[str, Any]:
        return service.server_metadata()

    @get(["/v2/models/{name:str}", "/v2/models/{name:str}/versions/{version:str}"], guards=guard(READ))
    async def model_metadata(name: FromPath[str], version: FromPath[str | None] = None) -> dict[str, Any]:
        return await service.metadata(name, version)

    @get(["/v2/models/{name:str}/ready", "/v2/models/{name:str}/versions/{version:str}/ready"],
         guards=guard(READ), sync_to_thread=False)
    def model_ready(name: FromPath[str], version: FromPath[str | None] = None) -> Response[Any]:
        if service.ready(name, version):
            return Response(b"", media_type=JSON)
        return Response({"error": f"model {name!r} is not ready"}, status_code=400)

    # The hot route: a plain Request and a pre-encoded answer, with none of Litestar's
    # parameter parsing or response building, which cost more than the rest of a tiny request.
    @post(["/v2/models/{name:str}/infer", "/v2/models/{name:str}/versions/{version:str}/infer"],
          guards=guard(INFER), request_max_body_size=max_body, status_code=200,
          media_type=JSON, response_description="the inference response (JSON, or JSON and binary data)")
    async def infer(request: Request) -> ASGIApp:
        headers = request.headers
        header_length = _header_length(headers.get(HEADER_LENGTH))
        size = request.content_length
        if size is not None and size > max_body:  # before any memory is set aside for it
            raise PayloadTooLarge(f"the request body is larger than {max_body} bytes")
        path = request.path_params
        name = path["name"]
        # The model before the body: a request for one there is not is answered without
        # reading, inflating or decoding what it sent.
        model, session = await service.session(name, path.get("version"))
        plan = service.plan(session)
        encoding = headers.get("content-encoding")
        encoded = encoding not in (None, "", "identity")
        body = await request.body() if encoded else await _read_body(request, size, header_length)

        def parse() -> tuple[_InferRequest, dict[str, bool], dict[str, np.ndarray]]:
            header, binary = _split(_decompress(body, encoding, max_body), header_length)
            req = _decode(header, _request_type(plan, len(header)))
            outputs_binary = _requested_outputs(req, plan)
            inputs = service.decode(plan, _wire_inputs(req.inputs, binary))
            req.inputs = []  # their JSON data, an object an element, need not outlive decoding
            return req, outputs_binary, inputs

        # Much JSON to decode, or a body to inflate, would hold up every other request on the
        # event loop; binary tensor data costs next to nothing to decode.
        json_bytes = len(body) if header_length is None else min(header_length, len(body))
        if (len(body) * _INFLATION if encoded else json_bytes) >= _OFFLOAD_FROM:
            async with decoding:
                req, outputs_binary, inputs = await service.kernel.pool.offload(parse)
        else:
            req, outputs_binary, inputs = parse()
        results = await service.infer(model, plan, inputs)
        wanted = outputs_binary or {n: req.parameters.get("binary_data_output") is True for n in results}
        return _answer(req, name, model.spec.version, results, wanted)

    @post("/v2/repository/index", guards=guard(READ), status_code=200)
    async def repository_index(request: Request) -> list[dict[str, str]]:
        body = await request.body()
        ask = _decode(body, _IndexRequest) if body.strip() else _IndexRequest()
        return service.index(ask.ready)

    @post("/v2/repository/models/{name:str}/load", guards=guard(REPOSITORY), status_code=200)
    async def repository_load(request: Request, name: FromPath[str]) -> Response[bytes]:
        body = await request.body()
        params = _decode(body, _LoadRequest).parameters if body.strip() else {}
        if any(key == "config" or key.startswith("file:") for key in params):
            raise BadRequest("loading with a config or model files in the request is not supported")
        await service.load(name)
        return Response(b"", media_type=JSON)

    @post("/v2/repository/models/{name:str}/unload", guards=guard(REPOSITORY), status_code=200)
    async def repository_unload(name: FromPath[str]) -> Response[bytes]:
        await service.unload(name)
        return Response(b"", media_type=JSON)

    served = [live, ready, server_metadata, model_metadata, model_ready, infer,
              repository_index, repository_load, repository_unload]

    # Litestar's own 404 is `{"detail": ...}`, which tritonclient cannot read.
    @route(_unserved({path for handler in served for path in handler.paths}), include_in_schema=False,
           http_method=["GET", "POST", "PUT", "PATCH", "DELETE"], sync_to_thread=False)
    def not_served(request: Request) -> None:
        raise NotFound(f"{request.method} {request.url.path} is not served")

    return Router(
        path="/",
        route_handlers=[*served, not_served],
        exception_handlers=service.kernel.error_handlers(_oip_error),
    )


def _unserved(served: set[str]) -> list[str]:
    """The paths of a route answering every path under /v2 that no route in `served` serves.
    Litestar matches a path segment by segment and never backtracks, so a catch-all at /v2
    alone would not get /v2/models/m/config: each branch of the routes needs its own, and so
    does each path that routes run through without serving it (/v2/models)."""
    following: dict[str, set[str]] = {}
    for path in served:
        parts = path.split("/")
        for end in range(2, len(parts)):
            following.setdefault("/".join(parts[:end]), set()).add(parts[end])
    paths = []
    for prefix, segments in following.items():
        if prefix not in served:
            paths.append(prefix)
        # Beside a path parameter (which takes any segment already) there is no room for one.
        if not any(segment.startswith("{") for segment in segments):
            paths.append(f"{prefix}/{{rest:path}}")
    return paths


def _decode(data: bytes | memoryview, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        match = _IN_DATA.fullmatch(str(exc))
        if match is None:
            raise BadRequest(f"invalid request: {exc}") from None
        # Only a number no float holds (1e400) fails inside `data`, whose elements are checked
        # for their datatype later: name its input and element as those checks do.
        tensor = _decode(data, _NamedInputs).inputs[int(match[2])]
        must = json_must(tensor.name, tensor.datatype)
        raise InvalidInput(f"{must}; {match[1]} - at `data{match[3]}`") from None
    except msgspec.DecodeError:
        raise BadRequest("the request is not valid JSON") from None
    except UnicodeDecodeError:  # what msgspec raises for a string that is not UTF-8
        raise BadRequest("the request is not valid JSON: it holds text that is not UTF-8") from None
    except RecursionError:
        raise BadRequest("the request is not valid JSON: it nests too deeply") from None


def _request_type(plan: Plan, header_length: int) -> type[_InferRequest]:
    """How to decode a JSON header: with `data` left undecoded, for `tensors.from_json` to
    size it up first, where the header is far longer than the model's inputs, all of fixed
    size, need (what a valid request still may be, with long numbers or much white space)."""
    if plan.elements is not None and header_length > plan.elements * _JSON_ELEMENT_BYTES + _JSON_HEADER_BYTES:
        return _SizedInferRequest
    return _InferRequest


def _decompress(body: bytes | memoryview, encoding: str | None, limit: int) -> bytes | memoryview:
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadRequest(f"unsupported Content-Encoding {encoding!r}; use gzip or deflate")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit)
    except zlib.error:
        raise BadRequest(f"the request body is not valid {encoding} data") from None
    if inflater.unconsumed_tail:
        raise PayloadTooLarge(f"the decompressed request is larger than {limit} bytes")
    return out


def _header_length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        length = -1
    if length < 0:
        raise BadRequest(f"Inference-Header-Content-Length {value!r} is not a byte count")
    return length


async def _read_body(request: Request, size: int | None, header_length: int | None) -> bytes | memoryview:
    """The body, of `size` bytes (its Content-Length, within the body limit); a large one is
    read straight into memory placed so that the binary data after the JSON header starts
    aligned, so `np.frombuffer` needs no copy to align it."""
    if header_length is None or size is None or size < _ALIGNED_FROM or header_length > size:
        return await request.body()
    pad = -header_length % _ALIGN
    buffer = memoryview(np.empty(pad + size, np.uint8))[pad:]
    filled = 0
    async for chunk in request.stream():
        end = filled + len(chunk)
        if end > size:
            raise BadRequest(f"the request body is longer than its Content-Length of {size} bytes")
        buffer[filled:end] = chunk
        filled = end
    if filled != size:
        raise BadRequest(f"the request body ended after {filled} of its {size} bytes")
    return buffer


def _split(body: bytes | memoryview, length: int | None) -> tuple[bytes | memoryview, memoryview]:
    """The JSON header and the binary tensor data after it."""
    if length is None:
        return body, memoryview(b"")
    if length > len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length '{length}' does not fit a body of {len(body)} bytes"
        )
    view = memoryview(body)
    return view[:length], view[length:]


def _wire_inputs(inputs: list[_Input], binary: memoryview) -> list[WireTensor]:
    tensors, offset = [], 0
    for tensor in inputs:
        params = tensor.parameters
        check_input_parameters(tensor.name, params)
        size = params.get("binary_data_size")
        data = None if tensor.data in _NO_DATA else JsonData(tensor.data)
        if size is None:
            tensors.append(WireTensor(tensor.name, tensor.datatype, tensor.shape, data))
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"input {tensor.name!r}: binary_data_size must be a byte count")
        if data is not None:
            raise InvalidInput(f"input {tensor.name!r} has both data and binary_data_size")
        if offset + size > len(binary):
            raise InvalidInput(
                f"input {tensor.name!r}: binary_data_size {size} runs past the end of the request "
                f"({len(binary) - offset} bytes left)"
            )
        tensors.append(WireTensor(tensor.name, tensor.datatype, tensor.shape, binary[offset:offset + size]))
        offset += size
    if offset != len(binary):
        raise InvalidInput(
            f"the request holds {len(binary) - offset} bytes of binary data that no input's binary_data_size claims"
        )
    return tensors


def _requested_outputs(req: _InferRequest, plan: Plan) -> dict[str, bool]:
    """Requested output -> whether it goes back as binary data; empty for all outputs."""
    default = req.parameters.get("binary_data_output") is True
    wanted: dict[str, bool] = {}
    for output in req.outputs:
        plan.check_output(output.name, output.parameters)
        wanted[output.name] = output.parameters.get("binary_data", default) is True
    return wanted


class _Answer:
    """An encoded inference response, sent as it is."""

    __slots__ = ("body", "start")

    def __init__(self, body: bytes, media_type: bytes, header_length: int | None = None) -> None:
        headers = [(b"content-type", media_type), (b"content-length", b"%d" % len(body))]
        if header_length is not None:
            headers.append((b"inference-header-content-length", b"%d" % header_length))
        self.start = {"type": "http.response.start", "status": 200, "headers": headers}
        self.body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(self.start)
        await send({"type": "http.response.body", "body": self.body})


def _answer(req: _InferRequest, name: str, version: str, results: dict[str, Any], binary: dict[str, bool]) -> _Answer:
    outputs, buffers = [], []
    for output, as_binary in binary.items():
        array = results[output]
        tensor: dict[str, Any] = {"name": output, "datatype": kernel.datatype_name(array.dtype), "shape": list(array.shape)}
        if as_binary:
            data = raw(array)
            buffers.append(data)
            tensor["parameters"] = {"binary_data_size": len(data)}
        else:
            tensor["data"] = as_json_data(output, array)
        outputs.append(tensor)
    answer: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": outputs}
    if req.id is not None:
        answer["id"] = req.id
    header = msgspec.json.encode(answer)
    if not buffers:
        return _Answer(header, JSON.encode())
    return _Answer(b"".join([header, *buffers]), b"application/octet-stream", len(header))
