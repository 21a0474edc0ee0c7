"""The protocol's REST routes (`/v2/...`), with the binary tensor data extension.

A request body is the JSON inference header, followed by the raw bytes of every input
whose `parameters.binary_data_size` says so, when `Inference-Header-Content-Length` gives
the header's length. Answers use the same layout for outputs asked with `binary_data`
(or all of them with the request's `binary_data_output`), as tritonclient expects.
"""

from __future__ import annotations

import zlib
from typing import Any

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

import kernel
from kernel import BadRequest, InvalidInput, PayloadTooLarge, Unavailable
from kernel_oip.service import INFER, READ, REPOSITORY, OipService, WireTensor
from kernel_oip.tensors import as_json_data, raw

HEADER_LENGTH = "inference-header-content-length"
JSON = "application/json"


class _Input(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = {}
    data: Any = None


class _Output(msgspec.Struct):
    name: str
    parameters: dict[str, Any] = {}


class _InferRequest(msgspec.Struct):
    inputs: list[_Input]
    id: str | None = None
    parameters: dict[str, Any] = {}
    outputs: list[_Output] = []


class _LoadRequest(msgspec.Struct):
    parameters: dict[str, Any] = {}


class _IndexRequest(msgspec.Struct):
    ready: bool = False


def _oip_error(status: int, message: str) -> dict[str, str]:
    return {"error": message}


def router(service: OipService) -> Router:
    """Every route, guarded by the kernel's auth when `--oip-auth` is on."""
    config = service.config
    max_body = service.kernel.config.kernel.max_body_size

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
    async def model_metadata(name: str, version: str | None = None) -> dict[str, Any]:
        return await service.metadata(name, version)

    @get(["/v2/models/{name:str}/ready", "/v2/models/{name:str}/versions/{version:str}/ready"],
         guards=guard(READ), sync_to_thread=False)
    def model_ready(name: str, version: str | None = None) -> Response[Any]:
        if service.ready(name, version):
            return Response(b"", media_type=JSON)
        return Response({"error": f"model {name!r} is not ready"}, status_code=400)

    @post(["/v2/models/{name:str}/infer", "/v2/models/{name:str}/versions/{version:str}/infer"],
          guards=guard(INFER), request_max_body_size=max_body, status_code=200)
    async def infer(request: Request, name: str, version: str | None = None) -> Response[bytes]:
        body = _decompress(await request.body(), request.headers.get("content-encoding"), max_body)
        header, binary = _split(body, request.headers.get(HEADER_LENGTH))
        req = _decode(header, _InferRequest)
        model, session = await service.session(name, version)
        outputs_binary = _requested_outputs(req, {t.name for t in session.outputs})
        inputs = service.decode(session, _wire_inputs(req.inputs, binary))
        results = await service.infer(model, session, inputs)
        wanted = outputs_binary or {n: req.parameters.get("binary_data_output") is True for n in results}
        return _answer(req, name, model.spec.version, results, wanted)

    @post("/v2/repository/index", guards=guard(READ), status_code=200)
    async def repository_index(request: Request) -> list[dict[str, str]]:
        body = await request.body()
        ask = _decode(body, _IndexRequest) if body.strip() else _IndexRequest()
        return service.index(ask.ready)

    @post("/v2/repository/models/{name:str}/load", guards=guard(REPOSITORY), status_code=200)
    async def repository_load(request: Request, name: str) -> Response[bytes]:
        body = await request.body()
        params = _decode(body, _LoadRequest).parameters if body.strip() else {}
        if any(key == "config" or key.startswith("file:") for key in params):
            raise BadRequest("loading with a config or model files in the request is not supported")
        await service.load(name)
        return Response(b"", media_type=JSON)

    @post("/v2/repository/models/{name:str}/unload", guards=guard(REPOSITORY), status_code=200)
    async def repository_unload(name: str) -> Response[bytes]:
        await service.unload(name)
        return Response(b"", media_type=JSON)

    return Router(
        path="/",
        route_handlers=[live, ready, server_metadata, model_metadata, model_ready, infer,
                        repository_index, repository_load, repository_unload],
        exception_handlers=service.kernel.error_handlers(_oip_error),
    )


def _decode(data: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid request: {exc}") from None
    except msgspec.DecodeError:
        raise BadRequest("the request is not valid JSON") from None


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
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


def _split(body: bytes, header_length: str | None) -> tuple[bytes | memoryview, memoryview]:
    """The JSON header and the binary tensor data after it."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length {header_length!r} does not fit a body of {len(body)} bytes"
        )
    view = memoryview(body)
    return view[:length], view[length:]


def _wire_inputs(inputs: list[_Input], binary: memoryview) -> list[WireTensor]:
    tensors, offset = [], 0
    for tensor in inputs:
        params = tensor.parameters
        if "shared_memory_region" in params:
            raise InvalidInput(f"input {tensor.name!r}: shared memory is not supported; send the data")
        size = params.get("binary_data_size")
        if size is None:
            tensors.append(WireTensor(tensor.name, tensor.datatype, tensor.shape, tensor.data))
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"input {tensor.name!r}: binary_data_size must be a byte count")
        if tensor.data is not None:
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


def _requested_outputs(req: _InferRequest, names: set[str]) -> dict[str, bool]:
    """Requested output -> whether it goes back as binary data; empty for all outputs."""
    default = req.parameters.get("binary_data_output") is True
    wanted: dict[str, bool] = {}
    for output in req.outputs:
        if output.name not in names:
            raise InvalidInput(f"unknown output {output.name!r}; the model gives {sorted(names)}")
        if output.parameters.get("classification"):
            raise InvalidInput(f"output {output.name!r}: the classification extension is not supported")
        if "shared_memory_region" in output.parameters:
            raise InvalidInput(f"output {output.name!r}: shared memory is not supported")
        wanted[output.name] = output.parameters.get("binary_data", default) is True
    return wanted


def _answer(req: _InferRequest, name: str, version: str, results: dict[str, Any], binary: dict[str, bool]) -> Response[bytes]:
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
        return Response(header, media_type=JSON)
    return Response(
        b"".join([header, *buffers]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
