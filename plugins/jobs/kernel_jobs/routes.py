"""AIME's HTTP routes: concrete paths per endpoint for clients, fixed ones for workers.

Client errors answer `{"success": false, "error": ..., "ep_version": ...}` with AIME's
status codes. Worker routes always answer HTTP 200 (with a `cmd`, but for progress), because
the worker interface re-requests in a tight loop on other codes; only a server-side failure is a
503, which sends the worker to poll `/worker_check_server_status` until we are back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from litestar import Request, Response, Router, get, post, route
from litestar.exceptions import HTTPException, SerializationException

import kernel
from kernel_jobs.endpoints import Endpoint
from kernel_jobs.service import ClientError, JobService, WorkerRefused

log = logging.getLogger("kernel.jobs")
#: Scope of a kernel token that may enable and disable endpoints.
ADMIN_SCOPE = "jobs:admin"
#: Names under `/api/` taken by the fixed routes below: no endpoint details alias there.
API_ROUTES = frozenset({"endpoints", "validate_key"})


def _service(request: Request) -> JobService:
    return request.app.state["jobs"]


async def _args(request: Request) -> dict[str, Any]:
    if request.method == "GET":
        return dict(request.query_params)
    try:
        body = await request.json()
    except (ValueError, SerializationException, RecursionError):
        raise ClientError(400, "request body is not valid JSON, or nested too deeply") from None
    if not isinstance(body, dict):
        raise ClientError(400, "request body must be a JSON object")
    return body


@contextlib.asynccontextmanager
async def _hangup(request: Request) -> AsyncIterator[asyncio.Event]:
    """An event set when the client closes the connection while we wait."""
    gone = asyncio.Event()

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                gone.set()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        yield gone
    finally:
        watcher.cancel()


def _client_error(endpoint: Endpoint | None, error: ClientError) -> Response:
    body = {"success": False, "error": error.error, "ep_version": endpoint.version if endpoint else None}
    return Response(body, status_code=error.status)


def endpoint_routes(endpoint: Endpoint) -> list[Any]:
    """The client routes of one endpoint, at concrete paths so a clash is found at startup."""
    methods = endpoint.methods

    @route(f"/{endpoint.name}", http_method=methods, status_code=200)
    async def submit(request: Request) -> Response:
        service = _service(request)
        try:
            args = await _args(request)
            job = await service.submit(endpoint, args, from_query=request.method == "GET")
            if not job["wait_for_result"]:
                return Response({"success": True, "job_id": job["id"], "ep_version": endpoint.version})
            async with _hangup(request) as gone:
                answer = await service.wait_for_result(endpoint, job["id"], gone)
            return Response(answer or {})
        except ClientError as error:
            return _client_error(endpoint, error)

    @route(f"/{endpoint.name}/progress", http_method=methods, status_code=200)
    async def progress(request: Request) -> Response:
        service = _service(request)
        try:
            job = await service.own_job(endpoint, await _args(request))
            return Response(await service.progress(endpoint, job))
        except ClientError as error:
            return _client_error(endpoint, error)

    @route(f"/{endpoint.name}/login", http_method=methods, status_code=200)
    async def login(request: Request) -> Response:
        try:
            args = await _args(request)
            key, user = args.get("key"), args.get("user")
            if key is not None and not isinstance(key, str):
                raise ClientError(401, "key must be a string")
            return Response(_service(request).login(endpoint, key, user if isinstance(user, str) else None))
        except ClientError as error:
            # The client interface reads a refused login from the body of a 200.
            return Response({"success": False, "error": error.error, "ep_version": endpoint.version})

    # AIME's client asks `/api/{name}` for these (`ModelAPI.get_endpoint_details`), the
    # original serves only `/api/endpoints/{name}`: both work here, unless the name is a fixed route's.
    aliases = [] if endpoint.name in API_ROUTES else [f"/api/{endpoint.name}"]

    @get([f"/api/endpoints/{endpoint.name}", *aliases])
    async def details(request: Request) -> Response:
        return Response(await _service(request).describe(endpoint))

    async def set_enabled(request: Request, enabled: bool) -> Response:
        await _service(request).store.set_enabled(endpoint.name, enabled)
        return Response({"success": True, "endpoint": endpoint.name, "enabled": enabled})

    # The original switches endpoints on and off from its admin backend; here an
    # operator does it with a kernel token holding the scope `jobs:admin`.
    @post(f"/api/endpoints/{endpoint.name}/enable", guards=[kernel.requires(ADMIN_SCOPE)], status_code=200)
    async def enable(request: Request) -> Response:
        return await set_enabled(request, True)

    @post(f"/api/endpoints/{endpoint.name}/disable", guards=[kernel.requires(ADMIN_SCOPE)], status_code=200)
    async def disable(request: Request) -> Response:
        return await set_enabled(request, False)

    return [submit, progress, login, details, enable, disable]


@get("/api/endpoints")
async def list_endpoints(request: Request) -> Response:
    service = _service(request)
    key = request.query_params.get("key")
    names = [ep.name for ep in service.endpoints.values()
             if not key or not ep.client_keys or key in ep.client_keys.values()]
    return Response({"success": True, "endpoints": names})


@get("/api/validate_key")
async def validate_key(request: Request) -> Response:
    key = request.query_params.get("key")
    endpoints = _service(request).endpoints.values()
    known = bool(key) and any(key in ep.client_keys.values() for ep in endpoints)
    valid = known or not any(ep.client_keys for ep in endpoints)
    return Response({"success": valid, "error": None if valid else "API key not valid"})


async def _worker_body(request: Request) -> Any:
    try:
        return await request.json()
    except (ValueError, SerializationException, RecursionError):
        raise WorkerRefused("error", "request body is not valid JSON, or nested too deeply") from None


def _worker_route(path: str, handle: Callable[[JobService, Any, Request], Any]) -> Any:
    @post(path, status_code=200)
    async def handler(request: Request) -> Response:
        try:
            answer = await handle(_service(request), await _worker_body(request), request)
        except WorkerRefused as refused:
            answer = {"cmd": refused.cmd, "msg": refused.msg}
        return Response(answer, status_code=200)

    return handler


async def _job_request(service: JobService, body: Any, request: Request) -> dict[str, Any]:
    async with _hangup(request) as gone:
        return await service.job_request(body, gone)


async def _status(service: JobService, body: Any, request: Request) -> dict[str, Any]:
    return await service.status(body)


async def _progress(service: JobService, body: Any, request: Request) -> Any:
    return await service.job_progress(body)


async def _result(service: JobService, body: Any, request: Request) -> dict[str, Any]:
    return await service.job_result(body)


def _worker_failure(request: Request, exc: Exception) -> Response:
    message = "server temporarily unavailable"
    if isinstance(exc, kernel.Unavailable):
        message = exc.detail  # expected, and logged by the store when the outage starts and ends
    elif isinstance(exc, (kernel.KernelError, HTTPException)) and exc.status_code < 500:
        return Response({"cmd": "error", "msg": exc.detail}, status_code=200)
    else:
        log.error("worker request %s failed", request.url.path, exc_info=exc)
    return Response({"cmd": "warning", "msg": message}, status_code=503, headers={"Retry-After": "1"})


def _client_failure(status: int, message: str) -> dict[str, Any]:
    return {"success": False, "error": message, "ep_version": None}


def routers(endpoints: dict[str, Endpoint]) -> list[Router]:
    clients = [h for ep in endpoints.values() for h in endpoint_routes(ep)] + [list_endpoints, validate_key]
    workers = [
        _worker_route("/worker_job_request", _job_request),
        _worker_route("/worker_check_server_status", _status),
        _worker_route("/worker_job_progress", _progress),
        _worker_route("/worker_job_result", _result),
    ]
    return [
        Router(path="/", route_handlers=clients, exception_handlers=kernel.error_handlers(_client_failure)),
        Router(path="/", route_handlers=workers, exception_handlers={Exception: _worker_failure}),
    ]
