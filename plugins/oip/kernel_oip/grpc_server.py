"""`inference.GRPCInferenceService` on grpcio's asyncio server, from Triton's .proto.

Imported only when the server starts, so `kernel serve` does not pay for grpc at import.
Inputs come as `raw_input_contents` (one buffer per input, straight to `np.frombuffer`)
or typed contents; outputs always go back as `raw_output_contents`, as Triton answers.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from kernel import DATATYPES, InvalidInput, KernelError, NotFound, datatype_name
from kernel_oip.proto import grpc_service_pb2 as pb
from kernel_oip.proto import grpc_service_pb2_grpc as pb_grpc
from kernel_oip.service import (
    INFER,
    READ,
    REPOSITORY,
    Contents,
    OipService,
    WireTensor,
    check_input_parameters,
)
from kernel_oip.tensors import raw, select_outputs

log = logging.getLogger("kernel.oip.grpc")

#: HTTP status of a kernel error -> gRPC status code.
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}

#: Datatype -> the typed contents field that carries it, and that field's element type
#: (FP16 travels only as raw bytes).
_CONTENTS = {
    "BOOL": ("bool_contents", np.bool_), "INT8": ("int_contents", np.int32),
    "INT16": ("int_contents", np.int32), "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64), "UINT8": ("uint_contents", np.uint32),
    "UINT16": ("uint_contents", np.uint32), "UINT32": ("uint_contents", np.uint32),
    "UINT64": ("uint64_contents", np.uint64), "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64), "BYTES": ("bytes_contents", np.object_),
}
_SERVICE = "inference.GRPCInferenceService"
_BEARER = re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE)

Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def rpc(scope: str | None, resource: Callable[[Any], str] = lambda _r: "server") -> Callable[[Handler], Handler]:
    """Check access for `scope`, and answer kernel errors with their gRPC status codes."""

    def wrap(method: Handler) -> Handler:
        @functools.wraps(method)
        async def handler(self: Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                # Without auth there is nothing to check: skip reading the metadata per call.
                if scope is not None and self.auth:
                    await self.service.authorize(_token(context), scope, resource(request))
                return await method(self, request, context)
            except KernelError as exc:
                code = _CODES.get(exc.status_code, grpc.StatusCode.INTERNAL)
                if code == grpc.StatusCode.INTERNAL:
                    log.error("%s: %s", method.__name__, exc.detail)
                await context.abort(code, exc.detail)
            except Exception:
                log.exception("%s failed", method.__name__)
                await context.abort(grpc.StatusCode.INTERNAL, "Internal server error")

        return handler

    return wrap


def _token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            match = _BEARER.match(value)
            return match.group(1) if match else None
    return None


def _model_name(request: Any) -> str:
    return request.name


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: OipService) -> None:
        self.service = service
        self.auth = service.config.auth

    @rpc(None)
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    @rpc(None)
    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.service.kernel.started)

    @rpc(READ)
    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(**self.service.server_metadata())

    @rpc(READ, _model_name)
    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            return pb.ModelReadyResponse(ready=self.service.ready(request.name, request.version))
        except NotFound:  # as Triton answers: tritonclient then says False rather than raising
            return pb.ModelReadyResponse(ready=False)

    @rpc(READ, _model_name)
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        meta = await self.service.metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
        )

    @rpc(INFER, lambda r: r.model_name)
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        service = self.service
        model, session = await service.session(request.model_name, request.model_version)
        plan = service.plan(session)
        wanted = [o.name for o in request.outputs]
        for output in request.outputs:
            plan.check_output(output.name, output.parameters)
        inputs = service.decode(plan, _wire_inputs(request))
        results = select_outputs(await service.infer(model, plan, inputs), wanted)
        # Built in one constructor call: protobuf takes bytes only, so each output is copied
        # once, from the array into the message.
        return pb.ModelInferResponse(
            model_name=request.model_name, model_version=model.spec.version, id=request.id,
            outputs=[
                _Output(name=name, datatype=datatype_name(array.dtype), shape=array.shape)
                for name, array in results.items()
            ],
            raw_output_contents=[bytes(raw(array)) for array in results.values()],
        )

    @rpc(READ)
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**m) for m in self.service.index(request.ready)]
        )

    @rpc(REPOSITORY, lambda r: r.model_name)
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        if any(key == "config" or key.startswith("file:") for key in request.parameters):
            raise InvalidInput("loading with a config or model files in the request is not supported")
        await self.service.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @rpc(REPOSITORY, lambda r: r.model_name)
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self.service.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _not_served(name: str) -> Handler:
    async def handler(self: Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        log.debug("%s is not served", name)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not served")

    return handler


# The generated base answers the RPCs not served by raising NotImplementedError, which
# grpcio logs as an error with its traceback on every call: answer them plainly instead.
for _method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
    if _method.name not in Servicer.__dict__:
        setattr(Servicer, _method.name, _not_served(_method.name))

_Output = pb.ModelInferResponse.InferOutputTensor


def _wire_inputs(request: Any) -> list[WireTensor]:
    raws = request.raw_input_contents
    if raws and len(raws) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents holds {len(raws)} buffers for {len(request.inputs)} inputs; "
            "send every input's data raw, or none"
        )
    tensors = []
    for i, tensor in enumerate(request.inputs):
        check_input_parameters(tensor.name, tensor.parameters)
        if raws and tensor.HasField("contents"):
            raise InvalidInput(f"input {tensor.name!r} has both contents and raw_input_contents")
        data = raws[i] if raws else _contents(tensor)
        tensors.append(WireTensor(tensor.name, tensor.datatype, list(tensor.shape), data))
    return tensors


def _contents(tensor: Any) -> Contents | None:
    """An input's typed contents, from the one field its datatype takes: values in another
    field would otherwise read as no data at all."""
    if not tensor.HasField("contents"):
        return None
    field, element = _CONTENTS.get(tensor.datatype, ("raw_input_contents", None))  # FP16 has no typed field
    given = [f.name for f, _ in tensor.contents.ListFields()]
    if given and given != [field] and tensor.datatype in DATATYPES:  # an unknown one is named later
        raise InvalidInput(
            f"input {tensor.name!r}: {tensor.datatype} data must be in {field}, got {', '.join(given)}"
        )
    if element is None:
        return None
    return Contents(field, np.array(getattr(tensor.contents, field), dtype=element))


class _Undecodable:
    """A request that is not a valid message of its RPC; the RPC answers INVALID_ARGUMENT."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _decoder(message: Any) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError as exc:  # raised here, grpcio would answer UNKNOWN and log a traceback
            return _Undecodable(f"the request is not a valid {message.__name__}: {str(exc).rpartition(': ')[2]}")

    return decode


def _checked(behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        return await behavior(request, context)

    return call


def _method_handlers(servicer: Servicer) -> dict[str, grpc.RpcMethodHandler]:
    """What the generated registration holds, but each unary RPC decoding its own request."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        request, response = getattr(pb, method.input_type.name), getattr(pb, method.output_type.name)
        behavior = getattr(servicer, method.name)
        if method.client_streaming or method.server_streaming:  # ModelStreamInfer, not served
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                behavior, request.FromString, response.SerializeToString)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _checked(behavior), _decoder(request), response.SerializeToString)
    return handlers


class GrpcServer:
    """The asyncio gRPC server, started and stopped with the kernel."""

    def __init__(self, service: OipService, host: str, port: int, max_message_bytes: int) -> None:
        self.address = f"{host}:{port}"
        # grpc's channel options are 32-bit: a larger --max-body-size is 2 GiB here.
        limit = min(max_message_bytes, 2**31 - 1)
        self._server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # A port already taken must be an error, not a silently shared socket.
            ("grpc.so_reuseport", 0),
        ])
        handlers = _method_handlers(Servicer(service))
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
        self._server.add_registered_method_handlers(_SERVICE, handlers)

    async def start(self) -> None:
        try:
            self._server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot listen for gRPC on {self.address}: {exc}") from None
        await self._server.start()
        log.info("gRPC inference service listening on %s", self.address)

    async def stop(self) -> None:
        await self._server.stop(grace=1.0)
