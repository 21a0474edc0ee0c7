"""`kernel serve --plugins jobs --jobs-endpoints DIR`: AIME API server compatible job queues."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from typing import Any

import kernel
from kernel import StartupError
from kernel_jobs.config import JobsConfig, add_options
from kernel_jobs.endpoints import Endpoint, load_endpoints
from kernel_jobs.local import LocalWorker
from kernel_jobs.routes import routers
from kernel_jobs.service import JobService
from kernel_jobs.store import MemoryStore, Store

log = logging.getLogger("kernel.jobs")


class Running:
    """One kernel's jobs service and the tasks it runs beside the routes."""

    def __init__(self, service: JobService) -> None:
        self.service = service
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []


#: Several kernels may live in one process (tests, embedding): state is per kernel.
_running: weakref.WeakKeyDictionary[kernel.Kernel, Running] = weakref.WeakKeyDictionary()


@kernel.hookimpl
def kernel_add_options(group: kernel.OptionGroup) -> None:
    add_options(group)


@kernel.hookimpl
def kernel_config_section() -> type:
    return JobsConfig


def _store(config: JobsConfig, job_types: list[str]) -> Store:
    if config.redis:
        from kernel_jobs.redis_store import RedisStore

        return RedisStore(config.redis, config.redis_prefix, job_types)
    return MemoryStore(config.max_bytes)


@kernel.hookimpl
def kernel_routes(kernel: kernel.Kernel) -> list[Any]:
    config: JobsConfig = kernel.config.section("jobs")
    endpoints = load_endpoints(config)
    if not endpoints:
        log.warning("jobs: no endpoints; pass --jobs-endpoints DIR with aime_api_endpoint.cfg files")
    job_types = sorted({ep.job_type for ep in endpoints.values()})
    _running[kernel] = Running(JobService(kernel, config, endpoints, _store(config, job_types)))
    return routers(endpoints)


@kernel.hookimpl
async def kernel_startup(kernel: kernel.Kernel) -> None:
    running = _running[kernel]
    service = running.service
    kernel.auth.tokens  # noqa: B018 - a weak or unreadable token secret stops the server now
    try:
        await service.store.start()
    except Exception as exc:  # noqa: BLE001 - any failure to connect means the same to the user
        raise StartupError(f"jobs: cannot reach Redis given by --jobs-redis: {type(exc).__name__}") from None
    kernel.app.state["jobs"] = service
    running.tasks.append(asyncio.ensure_future(_sweep(service, running.stop)))
    for endpoint in service.endpoints.values():
        if endpoint.model:
            _check_model(kernel, endpoint)
            worker = LocalWorker(kernel, service.store, endpoint)
            running.tasks.append(asyncio.ensure_future(worker.run(running.stop)))


def _check_model(kernel_: kernel.Kernel, endpoint: Endpoint) -> None:
    """Warn of an endpoint whose model the registry lacks. No startup error: a zoo upload or
    a rescan may add it later; until then each of its jobs answers the registry's error."""
    try:
        kernel_.registry.resolve(endpoint.model or "")
    except (kernel.NotFound, kernel.Conflict) as exc:
        log.warning("jobs: endpoint %r cannot run its jobs yet ([WORKER] model in %s): %s",
                    endpoint.name, endpoint.file, exc.detail)


async def _sweep(service: JobService, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await service.store.sweep(time.time())
        except kernel.Unavailable:
            pass  # the store logs an outage when it starts and when it ends
        except Exception:
            log.exception("jobs: checking timeouts failed; trying again")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), service.config.sweep_interval)


@kernel.hookimpl
async def kernel_shutdown(kernel: kernel.Kernel) -> None:
    running = _running.pop(kernel, None)
    if running is None:
        return
    running.stop.set()
    for task in running.tasks:
        task.cancel()
    await asyncio.gather(*running.tasks, return_exceptions=True)
    await running.service.store.close()
