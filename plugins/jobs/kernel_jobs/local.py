"""The kernel as the worker of endpoints that name a registry model.

Such jobs go through the same queue as remote ones, so progress, results, estimates and
the Redis sharing behave alike. Each model input comes from the endpoint input of the
same name (a `json` input: JSON text of a nested list); each output goes back as a nested list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import numpy as np

import kernel
from kernel_jobs.endpoints import Endpoint
from kernel_jobs.store import Store

log = logging.getLogger("kernel.jobs")
#: How long one take waits, so a stopping server is noticed quickly.
TAKE_SECONDS = 1.0


class LocalWorker:
    def __init__(self, kernel_: kernel.Kernel, store: Store, endpoint: Endpoint) -> None:
        self.kernel = kernel_
        self.store = store
        self.endpoint = endpoint
        self.name = f"kernel:{endpoint.model}"

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._one(stop)
            except Exception as exc:  # a store outage must not end the worker for good
                if not isinstance(exc, kernel.Unavailable):  # the store logs its outages itself
                    log.exception("the worker for model %s failed; retrying in %.0f s", self.endpoint.model,
                                  TAKE_SECONDS)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), TAKE_SECONDS)

    async def _one(self, stop: asyncio.Event) -> None:
        """Take one job and finish it (a job taken and then lost goes back to the queue when
        it has been silent for the endpoint's inactivity timeout)."""
        job = await self.store.take(self.endpoint.job_type, self.name, TAKE_SECONDS, stop)
        if job is None:
            return
        result = await self.infer(job["data"])
        finished = await self.store.finish(job["id"], result)
        if finished is not None:
            await self.store.record_duration(self.endpoint.job_type, time.time() - finished["start_time_compute"])

    async def infer(self, data: dict[str, Any]) -> dict[str, Any]:
        model_name = self.endpoint.model or ""
        try:
            model = await self.kernel.registry.load(model_name)
            session = model.session
            if session is None:
                raise kernel.Unavailable(f"model {model_name!r} is not loaded")
            inputs = {}
            for info in session.inputs:
                if info.name not in data:
                    raise kernel.BadRequest(f"model input {info.name!r} is missing from the job")
                inputs[info.name] = np.asarray(data[info.name], dtype=info.dtype)
            outputs = await self.kernel.registry.infer(model_name, inputs)
            return {name: value.tolist() for name, value in outputs.items()}
        except (kernel.KernelError, ValueError, TypeError) as exc:
            # The job's own data is wrong or the model cannot run: the client reads why.
            return {"error": getattr(exc, "detail", None) or str(exc)}
        except Exception:
            log.exception("model %s failed on a job", model_name)
            return {"error": "the model failed on this job"}
