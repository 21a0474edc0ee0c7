"""Where jobs wait, run and finish: the contract, and the in-memory store.

A job is a JSON-able dict: `id`, `endpoint`, `job_type`, `owner`, `data` (what the worker
gets), `state`, `worker`, times, `progress`, and its timeouts. States follow AIME:
queued -> processing -> done, or lapsed when it waits in the queue too long. A
processing job that goes silent is put back at the head of its queue; its time in the
queue counts from then (`queued_since`), as time spent with a worker that died is no
waiting. A finished job's result is handed out once (`claim`), then the job is forgotten.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections import deque
from typing import Any

import msgspec

QUEUED, PROCESSING, DONE, LAPSED = "queued", "processing", "done", "lapsed"
#: Why `Store.submit` turned a job away (None: it was queued).
QUEUE_FULL, CLIENT_LIMIT, DISABLED, STORE_FULL = "queue full", "client limit", "disabled", "store full"
#: Weight of the newest job in a job type's running mean duration.
MEAN_WEIGHT = 0.2

Job = dict[str, Any]


class Store(abc.ABC):
    async def start(self) -> None:
        """Connect; called at startup."""

    async def close(self) -> None:
        """Disconnect; called at shutdown."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return when the store can be reached; `kernel.Unavailable` when it cannot."""

    @abc.abstractmethod
    async def submit(self, job: Job, max_queue: int, client_limit: int) -> str | None:
        """Queue `job` at the tail, or say why not: DISABLED when its endpoint is disabled,
        CLIENT_LIMIT when its owner already has `client_limit` (> 0) jobs of this endpoint
        queued or processing, QUEUE_FULL when its queue holds `max_queue` jobs, STORE_FULL
        when the store holds as much as it may. Checked and queued in one step, so concurrent
        submits never overshoot a limit."""

    @abc.abstractmethod
    async def set_enabled(self, endpoint: str, enabled: bool) -> None:
        """Let an endpoint take new jobs, or refuse them (jobs already queued still run)."""

    @abc.abstractmethod
    async def enabled(self, endpoint: str) -> bool: ...

    @abc.abstractmethod
    async def take(self, job_type: str, worker: str, timeout: float, gone: asyncio.Event) -> Job | None:
        """The next job of `job_type`, now processing by `worker`; None after `timeout`
        seconds or once `gone` is set (the worker hung up)."""

    @abc.abstractmethod
    async def requeue(self, job_id: str) -> None:
        """Put a processing job back at the head of its queue."""

    @abc.abstractmethod
    async def progress(self, job_id: str, progress: Any, data: Any) -> bool:
        """Record a processing job's progress; False for a job that is not processing."""

    @abc.abstractmethod
    async def finish(self, job_id: str, result: dict[str, Any]) -> Job | None:
        """Store the result of a queued or processing job; the first result wins. The job,
        or None when it is unknown or already finished."""

    @abc.abstractmethod
    async def job(self, job_id: str) -> Job | None: ...

    @abc.abstractmethod
    async def claim(self, job_id: str) -> Job | None:
        """A done job with its result, to exactly one caller; the job is forgotten."""

    @abc.abstractmethod
    async def wait_done(self, job_id: str, timeout: float) -> None:
        """Return when the job may have changed state (done or lapsed), or after `timeout`."""

    @abc.abstractmethod
    async def position(self, job: Job) -> int:
        """Jobs ahead of a queued job (0: next); 0 for others."""

    @abc.abstractmethod
    async def sweep(self, now: float) -> None:
        """Requeue silent processing jobs, lapse jobs queued too long."""

    @abc.abstractmethod
    async def seen_worker(self, job_type: str, name: str, info: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def workers(self, job_type: str) -> dict[str, dict[str, Any]]: ...

    @abc.abstractmethod
    async def record_duration(self, job_type: str, seconds: float) -> None: ...

    @abc.abstractmethod
    async def mean_duration(self, job_type: str) -> float | None: ...


def next_mean(old: float | None, seconds: float) -> float:
    return seconds if old is None else (1 - MEAN_WEIGHT) * old + MEAN_WEIGHT * seconds


class MemoryStore(Store):
    """One process's queues: fast, and gone with the process. What its jobs and results
    take (their size as JSON) is counted: past `max_bytes` a submit is refused with
    STORE_FULL, while a worker's result is always kept (its work is done); jobs and
    results leave the count when they are claimed or expire."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        #: Each job's bytes (with its result once there is one), and their sum.
        self.sizes: dict[str, int] = {}
        self.bytes = 0
        self.jobs: dict[str, Job] = {}
        self.queues: dict[str, deque[str]] = {}
        self.waiters: dict[str, deque[asyncio.Future[str]]] = {}
        self.done_events: dict[str, asyncio.Event] = {}
        self.worker_info: dict[str, dict[str, dict[str, Any]]] = {}
        self.means: dict[str, float] = {}
        self.disabled: set[str] = set()
        #: Ids of each (endpoint, owner)'s recent jobs; only queued or processing ones count.
        self.active: dict[tuple[str, str], set[str]] = {}

    def _queue(self, job_type: str) -> deque[str]:
        return self.queues.setdefault(job_type, deque())

    def _hand_over(self, job_type: str, job_id: str, front: bool) -> None:
        waiters = self.waiters.get(job_type)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(job_id)
                return
        queue = self._queue(job_type)
        queue.appendleft(job_id) if front else queue.append(job_id)

    async def ping(self) -> None:
        """Always reachable: the store is this process."""

    async def submit(self, job: Job, max_queue: int, client_limit: int) -> str | None:
        if job["endpoint"] in self.disabled:
            return DISABLED
        if client_limit > 0:
            client = (job["endpoint"], job["owner"])
            # Pruned on every submit, so each set stays within the limit.
            active = {i for i in self.active.get(client, ())
                      if self.jobs.get(i, {}).get("state") in (QUEUED, PROCESSING)}
            self.active[client] = active
            if len(active) >= client_limit:
                return CLIENT_LIMIT
        if len(self._queue(job["job_type"])) >= max_queue:
            return QUEUE_FULL
        size = len(msgspec.json.encode(job))
        # One job is always taken: the request body limit bounds it.
        if self.max_bytes is not None and self.bytes and self.bytes + size > self.max_bytes:
            return STORE_FULL
        if client_limit > 0:
            active.add(job["id"])
        job["state"] = QUEUED
        self.jobs[job["id"]] = job
        self._count(job["id"], size)
        self.done_events[job["id"]] = asyncio.Event()
        self._hand_over(job["job_type"], job["id"], front=False)
        return None

    async def set_enabled(self, endpoint: str, enabled: bool) -> None:
        if enabled:
            self.disabled.discard(endpoint)
        else:
            self.disabled.add(endpoint)

    async def enabled(self, endpoint: str) -> bool:
        return endpoint not in self.disabled

    def _start(self, job_id: str, worker: str) -> Job:
        job = self.jobs[job_id]
        now = time.time()
        job.update(state=PROCESSING, worker=worker, start_time_compute=now, last_update=now)
        return job

    async def take(self, job_type: str, worker: str, timeout: float, gone: asyncio.Event) -> Job | None:
        queue = self._queue(job_type)
        if queue:
            return self._start(queue.popleft(), worker)
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(job_type, deque()).append(waiter)
        hangup = asyncio.ensure_future(gone.wait())
        try:
            await asyncio.wait({waiter, hangup}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hangup.cancel()
            if not waiter.done():
                waiter.cancel()
        if waiter.cancelled():
            return None
        job_id = waiter.result()
        if gone.is_set():
            self._hand_over(job_type, job_id, front=True)
            return None
        return self._start(job_id, worker)

    async def requeue(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is not None and job["state"] == PROCESSING:
            job.update(state=QUEUED, worker=None, start_time_compute=None, queued_since=time.time())
            self._hand_over(job["job_type"], job_id, front=True)

    async def progress(self, job_id: str, progress: Any, data: Any) -> bool:
        job = self.jobs.get(job_id)
        if job is None or job["state"] != PROCESSING:
            return False
        job.update(progress={"progress": progress, "progress_data": data}, last_update=time.time())
        return True

    async def finish(self, job_id: str, result: dict[str, Any]) -> Job | None:
        job = self.jobs.get(job_id)
        if job is None or job["state"] not in (QUEUED, PROCESSING):
            return None
        if job["state"] == QUEUED:  # a late result after a requeue: do not run it again
            queue = self._queue(job["job_type"])
            if job_id in queue:
                queue.remove(job_id)
        now = time.time()
        job.update(state=DONE, result=result, result_received_time=now,
                   expires=now + job["result_lifetime"])
        self._count(job_id, len(msgspec.json.encode(result)))
        self.done_events[job_id].set()
        return job

    async def job(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    async def claim(self, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        if job is None or job["state"] != DONE:
            return None
        self._forget(job_id)
        return job

    def _count(self, job_id: str, size: int) -> None:
        self.sizes[job_id] = self.sizes.get(job_id, 0) + size
        self.bytes += size

    def _forget(self, job_id: str) -> None:
        self.bytes -= self.sizes.pop(job_id, 0)
        self.jobs.pop(job_id, None)
        event = self.done_events.pop(job_id, None)
        if event is not None:
            event.set()

    async def wait_done(self, job_id: str, timeout: float) -> None:
        event = self.done_events.get(job_id)
        if event is not None:
            try:
                await asyncio.wait_for(event.wait(), timeout)
            except TimeoutError:
                pass

    async def position(self, job: Job) -> int:
        if job["state"] != QUEUED:
            return 0
        try:
            return self._queue(job["job_type"]).index(job["id"])
        except ValueError:
            return 0

    async def sweep(self, now: float) -> None:
        for job_id, job in list(self.jobs.items()):
            state = job["state"]
            if state == PROCESSING and now - job["last_update"] > job["inactivity_timeout"]:
                await self.requeue(job_id)
            elif state == QUEUED and now - job["queued_since"] > job["max_time_in_queue"]:
                queue = self._queue(job["job_type"])
                if job_id in queue:
                    queue.remove(job_id)
                job.update(state=LAPSED, expires=now + job["result_lifetime"])
                self.done_events[job_id].set()
            elif state in (DONE, LAPSED) and now > job["expires"]:
                self._forget(job_id)

    async def seen_worker(self, job_type: str, name: str, info: dict[str, Any]) -> None:
        self.worker_info.setdefault(job_type, {})[name] = info

    async def workers(self, job_type: str) -> dict[str, dict[str, Any]]:
        return dict(self.worker_info.get(job_type, {}))

    async def record_duration(self, job_type: str, seconds: float) -> None:
        self.means[job_type] = next_mean(self.means.get(job_type), seconds)

    async def mean_duration(self, job_type: str) -> float | None:
        return self.means.get(job_type)
