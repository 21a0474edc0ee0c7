"""A bounded thread pool for blocking native work (model loads and inference).

Native runtimes release the GIL, so threads give real parallelism without copying
tensors between processes. The pool admits at most `workers + queue` calls at once;
beyond that it answers `Unavailable` (HTTP 503 with Retry-After) instead of letting work
pile up behind a slow model.

On Linux its threads may run `nice` steps below the event loop, and so do the threads a
runtime starts from them (a thread inherits its creator's priority): when inference keeps
every core busy, the loop still gets a core as soon as a request arrives, so health
checks and light routes stay fast. Off by default: niced inference also yields to every
other busy process on the machine.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from kernel.errors import Unavailable

T = TypeVar("T")


class InferencePool:
    def __init__(self, workers: int, queue: int, nice: int = 0) -> None:
        if workers < 1 or queue < 0:
            raise ValueError("an inference pool needs at least one worker and a queue >= 0")
        self.workers = workers
        self.capacity = workers + queue
        self._pending = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(
            workers, thread_name_prefix="kernel-infer", initializer=lower_priority, initargs=(nice,))
        # Loads have threads of their own (a load is not an inference to admit or refuse);
        # runtimes start their thread pools there, so those need the same priority.
        self._loader = ThreadPoolExecutor(
            workers, thread_name_prefix="kernel-load", initializer=lower_priority, initargs=(nice,))
        self._helpers = ThreadPoolExecutor(
            os.cpu_count() or 1, thread_name_prefix="kernel-work", initializer=lower_priority, initargs=(nice,))

    @property
    def pending(self) -> int:
        """Calls admitted and not finished: running plus queued."""
        return self._pending

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        with self._lock:
            if self._pending >= self.capacity:
                raise Unavailable(
                    f"inference queue is full ({self.capacity} requests in progress); retry later"
                )
            self._pending += 1
        future = self._executor.submit(fn, *args)
        # Released when the thread is done (or the call is cancelled before it starts),
        # not when the awaiting request goes away: a running native call still holds a slot.
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    async def load(self, fn: Callable[..., T], *args: object) -> T:
        """Run a model load on the pool's loader threads."""
        return await asyncio.wrap_future(self._loader.submit(fn, *args))

    async def offload(self, fn: Callable[..., T], *args: object) -> T:
        """Run a request's CPU-heavy Python or native work (decoding an image, preparing a
        tensor, reading detections out of outputs) off the event loop, at the priority of
        inference. Not admitted or refused: the request's inference is."""
        return await asyncio.wrap_future(self._helpers.submit(fn, *args))

    def _release(self, _future: object) -> None:
        with self._lock:
            self._pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._loader.shutdown(wait=False, cancel_futures=True)
        self._helpers.shutdown(wait=False, cancel_futures=True)


def lower_priority(nice: int) -> None:
    """Lower the calling thread's priority by `nice` steps (Linux, where a priority is per
    thread; elsewhere it would be the whole process's, so nothing is done)."""
    if nice and sys.platform == "linux":
        tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
        except OSError:  # refused by a sandbox: inference still runs, at the loop's priority
            pass
