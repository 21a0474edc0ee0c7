"""`kernel serve --plugins detect`: a pyzm.serve-compatible detection server.

Importing this module stays cheap (no cv2, httpx, onnx or yaml): those load when the
server starts or a model first runs, so `kernel serve` is ready quickly.
"""

from __future__ import annotations

import weakref

import kernel
from kernel import Kernel, ModelSource, OptionGroup, StartupError
from kernel_detect.config import FRAME_STRATEGIES, DetectConfig, settings
from kernel_detect.service import DetectService

_services: weakref.WeakKeyDictionary[Kernel, DetectService] = weakref.WeakKeyDictionary()


def service_of(k: Kernel) -> DetectService:
    """This kernel's detector, made on first use from the `[detect]` section."""
    svc = _services.get(k)
    if svc is None:
        svc = _services[k] = DetectService(k, settings(k.config.section("detect")))
    return svc


@kernel.hookimpl
def kernel_add_options(group: OptionGroup) -> None:
    add = group.add_option
    add("--detect-models", "--models", nargs="+",
        help="model names, 'Published name=spec', absolute weight paths, or 'all' (default; loaded on first use)")
    add("--detect-base-path", "--base-path", help="directory of model subdirectories (pyzm's layout)")
    add("--detect-processor", "--processor", choices=["cpu", "gpu", "tpu"], help="processor for the models found")
    add("--detect-auth", "--auth", action="store_true", help="require a token from /login on /infer, /detect, /detect_urls")
    add("--detect-auth-user", "--auth-user", help="the user /login accepts (default admin)")
    add("--detect-auth-password", "--auth-password", help="the password /login accepts")
    add("--detect-token-expiry", type=int, help="seconds a /login token lasts (default 3600)")
    add("--detect-config", help="pyzm ServerConfig YAML; the fields it sets replace these options")
    add("--detect-prefix", help="serve every detect route under this path (default: the root)")
    add("--detect-min-confidence", type=float, help="threshold when a request gives none (default 0.3)")
    add("--detect-pattern", help="labels kept by /detect and /detect_urls (regular expression, default .*)")
    add("--detect-frame-strategy", choices=list(FRAME_STRATEGIES), help="best frame of /detect_urls (default most_models)")
    add("--detect-max-upload-bytes", type=int, help="largest upload accepted (default 50 MiB)")
    add("--detect-max-pixels", type=int, help="largest image decoded, in pixels (default 50 million)")
    add("--detect-frame-memory", type=kernel.byte_size, metavar="SIZE",
        help="decoded frames all requests may hold at once; past it a request gets 503 (default 512M)")
    add("--detect-fetch-timeout", type=float, help="seconds to fetch one frame URL, whole body included (default 10)")
    add("--detect-fetch-max-bytes", type=int, help="largest fetched frame (default 20 MiB)")
    add("--detect-fetch-max-redirects", type=int, help="redirects followed per frame URL (default 3)")
    add("--detect-fetch-allow", nargs="+", help="fetch only from these hosts, host:port or URL prefixes")
    add("--detect-fetch-parallel", type=int, help="frames fetched at once per /detect_urls request (default 4)")
    add("--detect-max-frames", type=int, help="files or URLs one /detect or /detect_urls request may send (default 32)")
    add("--detect-max-zones", type=int, help="zones one request may give (default 100)")
    add("--detect-max-zone-points", type=int, help="points one zone may have (default 1000)")
    add("--detect-pattern-timeout", type=float,
        help="seconds one request's patterns may take to match its labels (default 0.5)")


@kernel.hookimpl
def kernel_config_section() -> type:
    return DetectConfig


@kernel.hookimpl
def kernel_model_sources(kernel: Kernel) -> list[ModelSource]:
    return [service_of(kernel).source]


@kernel.hookimpl
def kernel_routes(kernel: Kernel) -> list:
    from kernel_detect.routes import router

    return [router(service_of(kernel).settings.config)]


@kernel.hookimpl
async def kernel_startup(kernel: Kernel) -> None:
    svc = service_of(kernel)
    config = svc.settings.config
    if config.auth:
        if not config.auth_password:
            raise StartupError("--detect-auth needs --detect-auth-password (alias --auth-password)")
        # A weak or missing --token-secret stops the server now, not on the first login.
        kernel.auth.tokens  # noqa: B018
    await svc.fetcher.start()


@kernel.hookimpl
async def kernel_shutdown(kernel: Kernel) -> None:
    await service_of(kernel).fetcher.close()
