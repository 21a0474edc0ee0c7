"""Internal routes under `/-/` (Datasette's convention) and `/openapi.json` at the root.

Reading them needs no credentials: they show no secrets. Changing the registry (rescan,
load, unload) needs a kernel token with the `admin` scope (`kernel token --scope admin`).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath

from kernel.auth import requires
from kernel.hookimpl import hookimpl
from kernel.metrics import CONTENT_TYPE


def _kernel(request: Request) -> Any:
    return request.app.state["kernel"]


@get("/health", sync_to_thread=False)
def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@get("/ready", sync_to_thread=False)
def ready(request: Request) -> Response[dict[str, str]]:
    """Readiness: every plugin has started."""
    if _kernel(request).started:
        return Response({"status": "ready"})
    return Response({"detail": "starting"}, status_code=503, headers={"Retry-After": "1"})


@get("/plugins", sync_to_thread=False)
def plugins(request: Request) -> list[dict[str, Any]]:
    """Loaded plugins and installed backends, with the hooks each implements."""
    kernel = _kernel(request)
    out = []
    for info in [*kernel.plugin_set.plugins, *kernel.plugin_set.backend_infos]:
        hooks = sorted(c.name for c in kernel.plugin_set.pm.get_hookcallers(
            kernel.plugin_set.pm.get_plugin(info.name)) or [])
        out.append({**info.public(), "hooks": hooks})
    return out


@get("/models", sync_to_thread=False)
def models(request: Request) -> list[dict[str, Any]]:
    """Every model in the registry with its backend, the reason for it, and its state."""
    return _kernel(request).registry.describe()


@post("/models/rescan", guards=[requires("admin")], status_code=200)
async def rescan(request: Request) -> list[dict[str, Any]]:
    """Ask every model source again."""
    registry = _kernel(request).registry
    await registry.rescan()
    return registry.describe()


@post("/models/{name:str}/load", guards=[requires("admin")], status_code=200)
async def load(request: Request, name: FromPath[str]) -> dict[str, Any]:
    registry = _kernel(request).registry
    return registry.describe(await registry.load(name))[0]


@post("/models/{name:str}/unload", guards=[requires("admin")], status_code=200)
async def unload(request: Request, name: FromPath[str]) -> dict[str, Any]:
    registry = _kernel(request).registry
    return registry.describe(await registry.unload(name))[0]


@get("/metrics", sync_to_thread=False)
def metrics(request: Request) -> Response[bytes]:
    """Prometheus text format."""
    kernel = _kernel(request)
    kernel.metrics.inference_pending.set(kernel.pool.pending)
    return Response(kernel.metrics.render(), media_type=CONTENT_TYPE)


@get("/openapi.json", include_in_schema=False, sync_to_thread=False)
def openapi(request: Request) -> dict[str, Any]:
    """The OpenAPI document of every loaded plugin's routes."""
    schema = request.app.openapi_schema
    if schema is None:
        raise HTTPException(status_code=404, detail="no OpenAPI schema")
    return schema.to_schema()


@hookimpl
def kernel_routes(kernel: Any) -> list[Any]:
    return [
        Router(path="/-", route_handlers=[health, ready, plugins, models, rescan, load, unload, metrics],
               tags=["kernel"]),
        openapi,
    ]
