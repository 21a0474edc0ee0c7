"""A bounded thread pool for blocking native work (model loads and inference).

Native runtimes release the GIL, so threads give real parallelism without copying
tensors between processes. The pool admits at most `workers + queue` calls at once;
beyond that it answers `Unavailable` (HTTP 503 with Retry-After) instead of letting work
pile up behind a slow model.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from kernel.errors import Unavailable

T = TypeVar("T")


class InferencePool:
    def __init__(self, workers: int, queue: int) -> None:
        if workers < 1 or queue < 0:
            raise ValueError("an inference pool needs at least one worker and a queue >= 0")
        self.workers = workers
        self.capacity = workers + queue
        self._pending = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="kernel-infer")

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

    def _release(self, _future: object) -> None:
        with self._lock:
            self._pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
