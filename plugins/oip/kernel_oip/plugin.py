"""`kernel serve --plugins oip`: the Open Inference Protocol v2 over REST and gRPC.

Every model in the kernel's registry is served; the gRPC server starts and stops with
the kernel. grpc is imported only at startup, so loading the plugin stays cheap.
"""

from __future__ import annotations

import weakref
from typing import Any

import kernel
from kernel_oip.config import OipConfig
from kernel_oip.service import OipService

#: Per kernel: the service its routes use, and the gRPC server it started.
_services: weakref.WeakKeyDictionary[kernel.Kernel, OipService] = weakref.WeakKeyDictionary()
_grpc: weakref.WeakKeyDictionary[kernel.Kernel, Any] = weakref.WeakKeyDictionary()


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


@kernel.hookimpl
def kernel_add_options(group: kernel.OptionGroup) -> None:
    group.add_option("--oip-grpc-port", "--grpc-port", type=int,
                     help="port of the gRPC inference service (default: 8081; 0: no gRPC)")
    group.add_option("--oip-auth", type=_bool, nargs="?", const=True, metavar="BOOL",
                     help="require a kernel JWT with an `oip` scope (default: off)")
    group.add_option("--oip-pdp-url", metavar="URL",
                     help="policy decision point asked about every authenticated call")
    group.add_option("--oip-pdp-timeout", type=float, metavar="SECONDS",
                     help="how long to wait for the policy decision point before denying (default: 5)")


@kernel.hookimpl
def kernel_config_section() -> type:
    return OipConfig


def _service(k: kernel.Kernel) -> OipService:
    service = _services.get(k)
    if service is None:
        service = _services[k] = OipService(k, k.config.section("oip"))
    return service


@kernel.hookimpl
def kernel_routes(kernel: kernel.Kernel) -> list:
    from kernel_oip.rest import router

    return [router(_service(kernel))]


@kernel.hookimpl
async def kernel_startup(kernel: kernel.Kernel) -> None:
    service = _service(kernel)
    await service.start()
    config: OipConfig = kernel.config.section("oip")
    if config.grpc_port:
        from kernel_oip.grpc_server import GrpcServer

        server = GrpcServer(service, kernel.config.kernel.host, config.grpc_port,
                            kernel.config.kernel.max_body_size)
        await server.start()
        _grpc[kernel] = server


@kernel.hookimpl
async def kernel_shutdown(kernel: kernel.Kernel) -> None:
    server = _grpc.pop(kernel, None)
    if server is not None:
        await server.stop()
    service = _services.get(kernel)
    if service is not None:
        await service.close()
