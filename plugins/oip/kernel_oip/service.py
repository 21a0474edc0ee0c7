"""What REST and gRPC share: models from the kernel's registry, validation, batching, access.

Both front ends turn their wire format into `WireTensor`s and their answers back; every
decision about models, inputs and who may do what is made here, once.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from kernel import (
    BadRequest,
    Forbidden,
    InvalidInput,
    KernelError,
    ModelError,
    Session,
    TensorInfo,
    Unauthorized,
    Unavailable,
)
from kernel import __version__ as kernel_version
from kernel_oip.batching import Batcher
from kernel_oip.config import OipConfig
from kernel_oip.pdp import PolicyDecisionPoint
from kernel_oip.tensors import check_header, from_buffer, from_contents, from_json, input_infos

if TYPE_CHECKING:
    from kernel import Kernel, Model

log = logging.getLogger("kernel.oip")

#: Scopes a token needs; holding `oip` allows them all.
READ, INFER, REPOSITORY = "oip:read", "oip:infer", "oip:repository"

#: Protocol extensions served (server metadata lists them).
EXTENSIONS = ["binary_tensor_data", "model_repository", "parameters"]

READY = "ready"
#: Registry states -> the model repository extension's states.
_STATES = {"ready": "READY", "loading": "LOADING"}


class JsonData(NamedTuple):
    """A REST input's `data` as decoded from JSON, its elements not yet checked for type."""

    value: Any


class Contents(NamedTuple):
    """A gRPC input's typed contents: the field they came in and its values, as an array of
    the field's type (int32 for `int_contents`, whichever integer datatype they are for)."""

    field: str
    values: np.ndarray


class WireTensor(NamedTuple):
    """A request tensor as it came: raw bytes, JSON data, typed values, or no data at all."""

    name: str
    datatype: str
    shape: Sequence[int]
    data: bytes | memoryview | JsonData | Contents | None


class Plan:
    """What every request to one loaded session needs, worked out once per session."""

    __slots__ = ("batchable", "elements", "inputs", "output_names")

    def __init__(self, session: Session) -> None:
        self.inputs: dict[str, TensorInfo] = {info.name: info for info in session.inputs}
        self.output_names = frozenset(info.name for info in session.outputs)
        #: The elements of a request, where every input's shape is fixed and none is BYTES
        #: (of any length): what bounds the size of a valid JSON request. None otherwise.
        self.elements: int | None = None if any(
            info.datatype == "BYTES" or any(dim < 0 for dim in info.shape) for info in session.inputs
        ) else sum(math.prod(info.shape) for info in session.inputs)
        #: Requests can be stacked, and answers split back by rows, only when every input's
        #: and every output's first dimension is dynamic (an output of fixed shape, a sum
        #: over the batch, has no rows to split).
        self.batchable = bool(session.inputs) and all(
            info.shape and info.shape[0] == -1 for info in (*session.inputs, *session.outputs)
        )

    def check_output(self, name: str, parameters: Mapping[str, Any]) -> None:
        """Refuse a requested output the model lacks, or one asked for with an extension
        that is not served: answering a plain tensor would look like success. `parameters`
        are REST's JSON object or gRPC's map (`get` gives a value or a message, either
        true when the parameter is set)."""
        if name not in self.output_names:
            raise InvalidInput(f"unknown output {name!r}; the model gives {sorted(self.output_names)}")
        if parameters.get("classification"):
            raise InvalidInput(f"output {name!r}: the classification extension is not supported")
        if "shared_memory_region" in parameters:
            raise InvalidInput(f"output {name!r}: shared memory is not supported")


def check_input_parameters(name: str, parameters: Mapping[str, Any]) -> None:
    """Refuse an input whose data would be in shared memory (REST or gRPC parameters)."""
    if "shared_memory_region" in parameters:
        raise InvalidInput(f"input {name!r}: shared memory is not supported; send the data")


class OipService:
    def __init__(self, kernel: Kernel, config: OipConfig) -> None:
        self.kernel = kernel
        self.registry = kernel.registry
        self.config = config
        self.pdp = PolicyDecisionPoint(config.pdp_url, config.pdp_timeout) if config.pdp_url else None
        self._batchers: dict[tuple[str, str, int, float], Batcher] = {}
        # Keyed by the session, so a reload gets a new plan and an unload frees the old one.
        self._plans: weakref.WeakKeyDictionary[Session, Plan] = weakref.WeakKeyDictionary()

    async def start(self) -> None:
        if self.config.auth:
            self.kernel.auth.tokens  # noqa: B018 - a weak or unreadable secret stops startup now
        if self.pdp is not None:
            await self.pdp.start()

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        self._batchers.clear()
        if self.pdp is not None:
            await self.pdp.close()

    # -- access ----------------------------------------------------------------------------

    async def authorize(self, token: str | None, scope: str, resource: str) -> None:
        """Check a bearer token (gRPC metadata) for `scope`, then ask the PDP if there is one."""
        if not self.config.auth:
            return
        if not token:
            raise Unauthorized("Not authenticated")
        principal = self.kernel.auth.tokens.verify(token)
        if not principal.allows(scope):
            raise Forbidden(f"this needs the scope {scope!r}")
        await self.check_policy(token, scope, resource)

    async def check_policy(self, token: str | None, scope: str, resource: str) -> None:
        if self.pdp is not None:
            await self.pdp.check(token or "", self._resource(resource), scope.partition(":")[2])

    def _resource(self, name: str) -> str:
        """A model's qualified name, so that the PDP decides on one resource whichever of the
        model's names a request used (`yolov8n` or `dir.yolov8n`)."""
        try:
            return self.registry.resolve(name) if name else name
        except KernelError:  # no such model: the request fails on its own after the check
            return name

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "kernel", "version": kernel_version, "extensions": EXTENSIONS}

    # -- models ----------------------------------------------------------------------------

    def model(self, name: str, version: str | None = None) -> Model:
        return self.registry.get(name, version or None)

    def ready(self, name: str, version: str | None = None) -> bool:
        return self.model(name, version).state == READY

    async def session(self, name: str, version: str | None = None) -> tuple[Model, Session]:
        """The model, loaded (lazily, as the registry does for every plugin)."""
        model = await self.registry.load(name, version or None)
        session = model.session
        if session is None:
            raise Unavailable(f"model {name!r} was unloaded while it was being used; retry")
        return model, session

    def plan(self, session: Session) -> Plan:
        try:
            plan = self._plans.get(session)
            if plan is None:
                plan = self._plans[session] = Plan(session)
        except TypeError:  # a session class with __slots__ and no weak references
            plan = Plan(session)
        return plan

    async def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        model, session = await self.session(name, version)
        return {
            "name": name,
            "versions": self.registry.versions(name),
            "platform": f"{model.choice.backend}_{model.spec.format}",
            "inputs": [_tensor_metadata(t) for t in session.inputs],
            "outputs": [_tensor_metadata(t) for t in session.outputs],
        }

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        names = self.registry.names()
        out = []
        for model in self.registry.models():
            if ready_only and model.state != READY:
                continue
            plain = model.spec.name
            state = _STATES.get(model.state, "UNAVAILABLE")
            reason = model.error or ("" if state != "UNAVAILABLE" else "unloaded")
            out.append({
                "name": plain if names.get(plain) == model.name else model.name,
                "version": model.spec.version,
                "state": state,
                "reason": reason,
            })
        return out

    async def load(self, name: str) -> None:
        self.model(name)  # NotFound / Conflict first, as they are
        try:
            await self.registry.load(name)
        except (ModelError, Unavailable) as exc:
            if "queue is full" in exc.detail:
                raise
            raise BadRequest(exc.detail) from None

    async def unload(self, name: str) -> None:
        for version in self.registry.versions(name):
            await self.registry.unload(name, version)

    # -- inference -------------------------------------------------------------------------

    def decode(self, plan: Plan, tensors: Sequence[WireTensor]) -> dict[str, np.ndarray]:
        """Arrays for the request's inputs, each checked against the model's metadata."""
        infos = input_infos(plan.inputs, [t.name for t in tensors])
        arrays = {}
        for tensor in tensors:
            info = infos[tensor.name]
            check_header(info, tensor.datatype, tensor.shape)
            if tensor.data is None:
                raise InvalidInput(f"input {tensor.name!r} has no data")
            if isinstance(tensor.data, (bytes, bytearray, memoryview)):
                arrays[tensor.name] = from_buffer(info, tensor.shape, tensor.data)
            elif isinstance(tensor.data, JsonData):
                arrays[tensor.name] = from_json(info, tensor.shape, tensor.data.value)
            else:
                arrays[tensor.name] = from_contents(info, tensor.shape, tensor.data.values, tensor.data.field)
        return arrays

    async def infer(self, model: Model, plan: Plan, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batcher = self._batcher(model) if plan.batchable else None
        if batcher is not None:
            return await batcher.infer(inputs)
        return await self.registry.infer(model.name, inputs, model.spec.version)

    def _batcher(self, model: Model) -> Batcher | None:
        params = model.spec.params
        size = params.get("max_batch_size", 0)
        if not isinstance(size, int) or size <= 1:
            return None
        delay = params.get("max_queue_delay_us", 0)
        if not isinstance(delay, (int, float)) or delay < 0:
            delay = 0
        # Settings are part of the key, so a rescan that changes them takes effect.
        key = (model.name, model.spec.version, size, delay)
        batcher = self._batchers.get(key)
        if batcher is None:
            name, version = model.name, model.spec.version

            async def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                return await self.registry.infer(name, inputs, version)

            batcher = self._batchers[key] = Batcher(run, size, delay / 1e6)
        return batcher


def _tensor_metadata(info: Any) -> dict[str, Any]:
    return {"name": info.name, "datatype": info.datatype, "shape": list(info.shape)}
