"""Dynamic batching: concurrent requests for one model merged into one runtime call.

A model opts in with `max_batch_size` (rows, the sum of the requests' first dimensions)
and `max_queue_delay_us` in its config. The first request of a batch waits at most the
delay (from its arrival) for others; requests whose inputs stack (same names, datatypes
and trailing shapes) join until the batch is full. One batch per model runs at a time;
requests that arrive meanwhile make up the next one. The merged outputs are split back
by rows. When the outputs cannot be split that way, or the merged call fails, each
request runs alone, so a batch never gives a request an answer it would not have got by
itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import numpy as np

log = logging.getLogger("kernel.oip.batching")

Tensors = dict[str, np.ndarray]
Runner = Callable[[Tensors], Awaitable[Tensors]]


class _Pending:
    __slots__ = ("future", "inputs", "queued", "rows")

    def __init__(self, inputs: Tensors, rows: int, future: asyncio.Future[Tensors], queued: float) -> None:
        self.inputs = inputs
        self.rows = rows
        self.future = future
        self.queued = queued

    def stacks_with(self, other: _Pending) -> bool:
        if self.inputs.keys() != other.inputs.keys():
            return False
        return all(
            a.dtype == b.dtype and a.shape[1:] == b.shape[1:]
            for name, a in self.inputs.items()
            for b in (other.inputs[name],)
        )


class Batcher:
    """Merges the requests of one model; `run` makes the runtime call."""

    def __init__(self, run: Runner, max_rows: int, delay_s: float) -> None:
        self._run = run
        self.max_rows = max_rows
        self.delay_s = delay_s
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._collector: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def infer(self, inputs: Tensors) -> Tensors:
        firsts = {a.shape[0] if a.ndim else 0 for a in inputs.values()}
        rows = firsts.pop() if len(firsts) == 1 else 0
        if rows == 0 or rows >= self.max_rows:
            return await self._run(inputs)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Tensors] = loop.create_future()
        self._queue.put_nowait(_Pending(inputs, rows, future, loop.time()))
        if self._collector is None or self._collector.done():
            self._collector = asyncio.create_task(self._collect())
        return await future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        carried: _Pending | None = None
        while True:
            first = carried or await self._queue.get()
            carried = None
            # One batch runs at a time, as on one model instance: requests that come while
            # it runs wait here and fill the next batch, rather than making small batches
            # that compete with it for the same cores.
            await self._idle.wait()
            batch, rows = [first], first.rows
            # The delay counts from the first request's arrival: one that already waited
            # for a running batch goes with whatever has queued behind it.
            deadline = first.queued + self.delay_s
            while rows < self.max_rows:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), left)
                    except TimeoutError:
                        break
                if rows + item.rows > self.max_rows or not first.stacks_with(item):
                    carried = item
                    break
                batch.append(item)
                rows += item.rows
            self._idle.clear()
            task = asyncio.create_task(self._dispatch(batch))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._idle.set()

    async def _dispatch(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]
        if len(live) == 1:
            await self._alone(live[0])
            return
        if not live:
            return
        merged = {name: np.concatenate([p.inputs[name] for p in live]) for name in live[0].inputs}
        total = sum(p.rows for p in live)
        try:
            outputs = await self._run(merged)
        except Exception:  # noqa: BLE001 - any failure: retry each request alone
            # One bad request must not fail the others: let each find its own answer.
            await asyncio.gather(*(self._alone(p) for p in live))
            return
        if any(a.ndim == 0 or a.shape[0] != total for a in outputs.values()):
            log.warning("outputs do not follow the batch dimension; running requests one by one")
            await asyncio.gather(*(self._alone(p) for p in live))
            return
        start = 0
        for pending in live:
            end = start + pending.rows
            if not pending.future.done():
                pending.future.set_result({name: a[start:end] for name, a in outputs.items()})
            start = end

    async def _alone(self, pending: _Pending) -> None:
        try:
            result = await self._run(pending.inputs)
        except Exception as exc:  # noqa: BLE001 - the caller gets its own error
            if not pending.future.done():
                pending.future.set_exception(exc)
            return
        if not pending.future.done():
            pending.future.set_result(result)

    async def close(self) -> None:
        tasks = [t for t in (self._collector, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
