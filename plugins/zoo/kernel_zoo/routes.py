"""The routes of DeGirum's model zoo server, with its status codes and `{"detail": ...}` errors.

Like the original, a zoo or model that does not exist is a 400 and every auth refusal a 401.
Query parameters are read here rather than by Litestar, so that a missing or unreadable one
is FastAPI's 422 with its list of errors, as the original answers.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.params import FromPath
from litestar.response import File

import kernel
from kernel_zoo import auth
from kernel_zoo.archives import Limits, check_name, read_archive
from kernel_zoo.tokens import TokenEntry, TokenValue, new_token
from kernel_zoo.tree import EXT
from kernel_zoo.uploads import receive

if TYPE_CHECKING:
    from kernel_zoo.plugin import Zoo

API = "/zoo/v1/public"
MODELS = API + "/models/{organization:str}/{zoo_name:str}"
MODEL = MODELS + "/{model:str}"
#: An org, zoo or model name from the route's path (Litestar wants path parameters declared).
Part = FromPath[str]
#: Device types a zoo server reports, as the original does (PySDK filters models by them).
DEVICES = (
    "DUMMY/DUMMY", "N2X/CPU", "N2X/ORCA", "N2X/ORCA1", "HAILORT/HAILO8", "HAILORT/HAILO8L",
    "ONNX/CPU", "ONNX/VITIS_NPU", "OPENVINO/CPU", "OPENVINO/GPU", "OPENVINO/NPU", "RKNN/RK3566",
    "RKNN/RK3568", "RKNN/RK3588", "TENSORRT/DLA", "TENSORRT/GPU", "TFLITE/AM68PA", "TFLITE/ARMNN",
    "TFLITE/CPU", "TFLITE/EDGETPU", "TFLITE/NXP_ETHOSU", "TFLITE/NXP_VX", "MEMRYX/MX3",
)

#: Query values FastAPI reads as a boolean (any case); anything else is a 422 there.
BOOLS = {"1": True, "on": True, "t": True, "true": True, "y": True, "yes": True,
         "0": False, "off": False, "f": False, "false": False, "n": False, "no": False}

reader = [kernel.requires(), auth.zoo_reader]
admin = [kernel.requires(), auth.admin]
_json = msgspec.json.Encoder()


def _zoo(request: Request) -> Zoo:
    from kernel_zoo.plugin import zoo_of

    return zoo_of(request.app.state["kernel"])


def _json_response(value: Any, status: int = 200) -> Response[bytes]:
    return Response(_json.encode(value), media_type="application/json", status_code=status)


class InvalidQuery(kernel.KernelError):
    """A query parameter missing or unreadable; answered in FastAPI's shape by `_unprocessable`."""

    status_code = 422

    def __init__(self, kind: str, name: str, message: str, value: str | None) -> None:
        super().__init__(f"query parameter {name!r}: {message}")
        self.error = {"type": kind, "loc": ["query", name], "msg": message, "input": value}


def _unprocessable(request: Request, exc: InvalidQuery) -> Response[bytes]:
    return _json_response({"detail": [exc.error]}, exc.status_code)


#: The exception handlers of the routes that read query parameters.
QUERY_ERRORS = {InvalidQuery: _unprocessable}


def _query(request: Request, name: str) -> str | None:
    """The last value of a query parameter, the one FastAPI reads."""
    values = request.query_params.getall(name, [])
    return values[-1] if values else None


def _required(request: Request, name: str) -> str:
    value = _query(request, name)
    if value is None:
        raise InvalidQuery("missing", name, "Field required", None)
    return value


def _flag(request: Request, name: str) -> bool:
    """A boolean query parameter, false when absent."""
    value = _query(request, name)
    if value is None:
        return False
    flag = BOOLS.get(value.lower())
    if flag is None:
        raise InvalidQuery("bool_parsing", name, "Input should be a valid boolean, unable to interpret input",
                           value)
    return flag


def _header(request: Request, name: str) -> str:
    """A header by its documented name (`token_to_delete`) or as the original reads it
    (FastAPI turns the underscores into hyphens: `token-to-delete`)."""
    value = request.headers.get(name) or request.headers.get(name.replace("_", "-"))
    if not value:
        raise kernel.BadRequest(f"missing header {name!r}")
    return value


# -- beside the zoo API ------------------------------------------------------------------------


@get("/zoo/version", sync_to_thread=False)
def version() -> dict[str, str]:
    return {"version": "v1"}


@get("/devices/api/v1/public/system-info", sync_to_thread=False)
def system_info() -> dict[str, Any]:
    return {"Devices": {device: [{"@Index": 0}] for device in DEVICES}}


@get("/api/v1/public/zoos-check/{organization:str}/{zoo_name:str}", guards=reader)
async def zoos_check(request: Request, organization: Part, zoo_name: Part) -> dict[str, Any]:
    _zoo(request).tree.zoo_dir(organization, zoo_name)
    return {}


# -- tokens ------------------------------------------------------------------------------------


def _entry(token: str, value: TokenValue) -> TokenEntry:
    return TokenEntry(token=token, value=TokenValue(value.is_admin, list(value.zoos)))


@get(API + "/tokens", guards=[kernel.requires()])
async def token_get(request: Request) -> TokenEntry:
    token = auth.credential(request) or ""
    value = _zoo(request).store.get(token)
    if value is None:  # a kernel JWT: describe what its scopes allow
        principal: kernel.Principal = request.user
        value = TokenValue(
            is_admin=principal.allows(auth.ADMIN),
            zoos=sorted(s.removeprefix("zoo:read:") for s in principal.scopes if s.startswith("zoo:read:")),
        )
    return _entry(token, value)


@post(API + "/tokens", status_code=200, exception_handlers=QUERY_ERRORS)
async def token_create(request: Request) -> TokenEntry:
    """The first token needs no credential and must be an admin; later ones need an admin."""
    is_admin = _flag(request, "is_admin")
    store = _zoo(request).store
    principal = None
    if not store.empty():
        k: kernel.Kernel = request.app.state["kernel"]
        principal = await k.auth.authenticate(request, request.route_handler.opt.get("kernel_plugin"))
        if principal is None or not principal.allows(auth.ADMIN):  # before a change is even tried
            raise kernel.Unauthorized("Token does not have admin rights")

    def edit(tokens: dict[str, TokenValue]) -> TokenEntry:
        if tokens and (principal is None or not principal.allows(auth.ADMIN)):
            raise kernel.Unauthorized("Token does not have admin rights")
        if not tokens and not is_admin:
            raise kernel.Unauthorized("First token should be created with admin rights")
        token = new_token()
        tokens[token] = TokenValue(is_admin=is_admin)
        return _entry(token, tokens[token])

    return await store.change(edit)


@delete(API + "/tokens", guards=admin, status_code=200)
async def token_delete(request: Request) -> TokenEntry:
    target = _header(request, "token_to_delete")

    def edit(tokens: dict[str, TokenValue]) -> TokenEntry:
        value = tokens.pop(target, None)
        if value is None:
            raise kernel.BadRequest("Token does not exist")
        return _entry(target, value)

    return await _zoo(request).store.change(edit)


@post(API + "/tokens/{organization:str}/{zoo_name:str}", guards=admin, status_code=200)
async def token_add_zoo(request: Request, organization: Part, zoo_name: Part) -> TokenEntry:
    target = _header(request, "token_to_modify")
    url = f"{check_name('organization', organization)}/{check_name('zoo', zoo_name)}"

    def edit(tokens: dict[str, TokenValue]) -> TokenEntry:
        value = tokens.get(target)
        if value is None:
            raise kernel.BadRequest("Token does not exist")
        if url in value.zoos:
            raise kernel.BadRequest(f"Nothing to add: token already has access to {url}")
        value.zoos = sorted([*value.zoos, url])
        return _entry(target, value)

    return await _zoo(request).store.change(edit)


@delete(API + "/tokens/{organization:str}/{zoo_name:str}", guards=admin, status_code=200)
async def token_remove_zoo(request: Request, organization: Part, zoo_name: Part) -> TokenEntry:
    target = _header(request, "token_to_modify")
    url = f"{organization}/{zoo_name}"

    def edit(tokens: dict[str, TokenValue]) -> TokenEntry:
        value = tokens.get(target)
        if value is None:
            raise kernel.BadRequest("Token does not exist")
        if url not in value.zoos:
            raise kernel.BadRequest(f"Nothing to remove: token already does not have access to {url}")
        value.zoos = [z for z in value.zoos if z != url]
        return _entry(target, value)

    return await _zoo(request).store.change(edit)


# -- zoos and models ---------------------------------------------------------------------------


@get(API + "/zoos/{organization:str}", guards=[kernel.requires()])
async def zoos_list(request: Request, organization: Part) -> list[dict[str, Any]]:
    names = auth.zoos_of(request.user, organization, _zoo(request).tree.zoos(organization))
    return [{"name": z, "url": f"{organization}/{z}", "public": False, "own": False} for z in names]


@get(MODELS, guards=reader)
async def models_list(request: Request, organization: Part, zoo_name: Part) -> Response[bytes]:
    tree = _zoo(request).tree
    folder = tree.zoo_dir(organization, zoo_name)
    listing = tree.recent_listing(folder) or await asyncio.to_thread(tree.listing, folder)
    # `short` (older clients) asks for the names only; the answer keeps its shape. The
    # original has no `short` and ignores it, so a value that is not a boolean lists in full.
    short = BOOLS.get((_query(request, "short") or "").lower(), False)
    return Response(listing.short if short else listing.full, media_type="application/json")


async def _model(request: Request, organization: str, zoo_name: str, model: str):
    tree = _zoo(request).tree
    return await asyncio.to_thread(tree.model, organization, zoo_name, model)


@get(MODEL + "/check", guards=reader, exception_handlers=QUERY_ERRORS)
async def model_check(request: Request, organization: Part, zoo_name: Part, model: Part) -> dict[str, bool]:
    checksum = _required(request, "checksum")
    _, info = await _model(request, organization, zoo_name, model)
    return {"status": info.checksum == checksum}


@get(MODEL + "/dictionary", guards=reader)
async def model_dictionary(request: Request, organization: Part, zoo_name: Part,
                           model: Part) -> Response[bytes]:
    _, info = await _model(request, organization, zoo_name, model)
    return _json_response(info.labels)


@get(MODEL + "/readme", guards=reader)
async def model_readme(request: Request, organization: Part, zoo_name: Part, model: Part) -> Response[bytes]:
    _, info = await _model(request, organization, zoo_name, model)
    return _json_response(info.readme)


@get(MODEL + "/info", guards=reader)
async def model_info(request: Request, organization: Part, zoo_name: Part, model: Part) -> Response[bytes]:
    _, info = await _model(request, organization, zoo_name, model)
    # `model_dictionary` is the original server's key; PySDK 1.5 reads `model_labels`.
    return _json_response({
        "model_params": info.params, "model_dictionary": info.labels, "model_labels": info.labels,
        "readme": info.readme, "crc": info.checksum,
    })


@get(MODEL, guards=reader)
async def model_download(request: Request, organization: Part, zoo_name: Part, model: Part) -> File:
    from kernel_zoo.downloads import archive_response

    path, _ = await _model(request, organization, zoo_name, model)
    try:
        return archive_response(path, model)
    except FileNotFoundError:  # deleted since it was looked up
        raise kernel.BadRequest(f"Model {model} is not found in model zoo {organization}/{zoo_name}") from None


@post(MODELS, guards=admin, status_code=201, request_max_body_size=None, exception_handlers=QUERY_ERRORS)
async def model_upload(request: Request, organization: Part, zoo_name: Part) -> dict[str, str]:
    allow_overwrite = _flag(request, "allow_overwrite")
    z = _zoo(request)
    folder = z.tree.zoo_dir(organization, zoo_name)
    received = await receive(request, z.tree.uploads, z.config.max_upload)
    limits = Limits(z.config.max_unpacked, z.config.max_ratio, z.config.max_members)
    try:
        info = await asyncio.to_thread(read_archive, received.temp, received.model, limits)
        async with z.tree.lock(organization, zoo_name, received.model):
            await asyncio.to_thread(z.tree.commit, received.temp, folder / (received.model + EXT), info, allow_overwrite)
    finally:
        received.temp.unlink(missing_ok=True)
    await request.app.state["kernel"].registry.rescan("zoo")
    return {"url": f"{organization}/{zoo_name}/{received.model}"}


@delete(MODEL, guards=admin, status_code=200)
async def model_delete(request: Request, organization: Part, zoo_name: Part,
                       model: Part) -> dict[str, str]:
    z = _zoo(request)
    async with z.tree.lock(organization, zoo_name, model):
        await asyncio.to_thread(z.tree.delete, organization, zoo_name, model)
    await request.app.state["kernel"].registry.rescan("zoo")
    return {"url": f"{organization}/{zoo_name}/{model}"}


HANDLERS = [
    version, system_info, zoos_check,
    token_get, token_create, token_delete, token_add_zoo, token_remove_zoo,
    zoos_list, models_list, model_check, model_dictionary, model_readme, model_info,
    model_download, model_upload, model_delete,
]
