"""PTG's WebSockets: `/data/{sid}/push` and `/data/{sid}/pull`.

Both hold a bounded amount of data per socket. A push reads at most `push_queue` messages
ahead of Redis, then stops reading (TCP slows the sender); a pull's messages hold at most
`max_bytes` of entries, it reads Redis at most one read ahead of the message the socket is
sending, and that send waits while the client is slow, for `send_timeout_s` at most. Errors
close the socket with a code and a reason: 1003 wrong frame type, 1007 a malformed batch, 1008
a bad query, a command Redis refused or a client that takes nothing, 1013 the data store is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.params import FromPath

import kernel
from kernel_streams import framing, params
from kernel_streams.budget import Budget
from kernel_streams.rest import GUARD, cursors
from kernel_streams.runtime import runtime
from kernel_streams.store import Entry, StoreUnavailable, StreamStore

log = logging.getLogger("kernel.streams")

WRONG_TYPE, BAD_DATA, POLICY, TRY_LATER = 1003, 1007, 1008, 1013
#: Push messages written to Redis in one round trip at most.
_GROUP = 64
#: A pull of small entries reads up to this many entries, about this many bytes, from Redis at once.
READ_AHEAD_ENTRIES = 256
READ_AHEAD_BYTES = 1 << 20
#: Longest `timeout` of a pull (ms): a day; Redis refuses a block time past its clock's range.
MAX_TIMEOUT_MS = 86_400_000


class _Closed(Exception):
    """The client went away."""


class _Refuse(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def _receive(socket: WebSocket) -> dict[str, Any]:
    try:
        message = await socket.receive()
    except WebSocketDisconnect:
        raise _Closed from None
    if message["type"] == "websocket.disconnect":
        raise _Closed
    return message


async def _close(socket: WebSocket, code: int, reason: str) -> None:
    """Close with `code`, waiting at most `send_timeout_s` for the client to take what is before it."""
    reason = reason.encode()[:120].decode(errors="ignore")
    with contextlib.suppress(Exception):
        await asyncio.wait_for(socket.close(code=code, reason=reason), runtime(socket).config.send_timeout_s)


def _refusal(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, _Refuse):
        return exc.code, exc.reason
    if isinstance(exc, framing.BadFrame):
        return BAD_DATA, exc.detail
    if isinstance(exc, StoreUnavailable):
        return TRY_LATER, exc.detail
    if isinstance(exc, kernel.KernelError):
        return POLICY, exc.detail
    log.error("unexpected error on a stream socket", exc_info=exc)
    return 1011, "internal server error"


# -- push ----------------------------------------------------------------------------------


@websocket("/data/{sid:str}/push", guards=GUARD)
async def push(socket: WebSocket, sid: FromPath[str]) -> None:
    """Entries in: one binary frame each, or with `batch` a JSON header then one blob;
    with `ack` each message is answered by its comma-joined entry ids."""
    rt = runtime(socket)
    query = socket.query_params
    await socket.accept()
    try:
        batch = bool(params.flag(query, "batch"))
        ack = bool(params.flag(query, "ack"))
        targets = None if sid == "*" else framing.split_stream_ids(sid)
        if (targets is None or len(targets) > 1) and not batch:
            raise kernel.BadRequest("pushing to several streams needs batch=true")
    except kernel.BadRequest as exc:
        await _close(socket, POLICY, exc.detail)
        return
    queue: asyncio.Queue[list[tuple[str, str, Any]] | BaseException | None] = asyncio.Queue(rt.config.push_queue)

    async def read() -> None:
        try:
            while True:
                items = None
                if batch:
                    message = await _receive(socket)
                    if message.get("text") is None:
                        raise _Refuse(WRONG_TYPE, "expected the batch header as a text frame")
                    items = framing.parse_header(message["text"])
                message = await _receive(socket)
                blob = message.get("bytes")
                if blob is None:
                    raise _Refuse(WRONG_TYPE, "expected entry data as a binary frame")
                if items is None:
                    entries = [(targets[0], "*", blob)]  # type: ignore[index]
                else:
                    entries = framing.split_batch(items, blob, targets)
                await queue.put(entries)
        except _Closed:
            await queue.put(None)
        except Exception as exc:  # noqa: BLE001 -- ends the socket after what came before is stored
            await queue.put(exc)

    reader = asyncio.create_task(read())
    try:
        while True:
            group = [await queue.get()]
            while len(group) < _GROUP and not queue.empty() and isinstance(group[-1], list):
                group.append(queue.get_nowait())
            end = group.pop() if not isinstance(group[-1], list) else False
            if group:
                ids = await rt.store.add([e for msg in group for e in msg])
                if ack:
                    at = 0
                    for msg in group:
                        await socket.send({"type": "websocket.send", "text": ",".join(ids[at:at + len(msg)]), "bytes": None})
                        at += len(msg)
            if end is None:
                return
            if end is not False:
                raise end
    except (_Closed, WebSocketDisconnect):
        return
    except Exception as exc:  # noqa: BLE001 -- every failure closes the socket with a code
        code, reason = _refusal(exc)
        await _close(socket, code, reason)
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader


# -- pull ----------------------------------------------------------------------------------


class _Out:
    """A pull's batches going out: each written as its JSON header then its blob, then, with
    `ack`, the client's message awaited. uvicorn's `send` waits while the socket's buffer
    still holds the last message, so a client that stops reading holds up the writer, not
    more memory; `since`, when the write waiting now began, lets the pull give up on it."""

    def __init__(self, socket: WebSocket, ack: bool) -> None:
        self.socket = socket
        self.acks: asyncio.Queue[None] | None = asyncio.Queue(1) if ack else None
        self.since: float | None = None

    async def write(self, entries: list[Entry]) -> None:
        header, blob = framing.pack(entries)
        entries.clear()  # the blob holds their data now: not both while the client takes it
        self.since = time.monotonic()
        # the ASGI events themselves: Litestar's send_text/send_bytes only add layers here
        await self.socket.send({"type": "websocket.send", "text": header.decode(), "bytes": None})
        await self.socket.send({"type": "websocket.send", "bytes": blob, "text": None})
        self.since = None

    async def acked(self) -> None:
        if self.acks is not None:
            await self.acks.get()

    async def send(self, entries: list[Entry]) -> None:
        await self.write(entries)
        await self.acked()


@websocket("/data/{sid:str}/pull", guards=GUARD)
async def pull(socket: WebSocket, sid: FromPath[str]) -> None:
    """Entries out, as a JSON header `[[sid, id, start], ...]` then one blob, for ever:
    blocking in Redis until entries arrive; with `timeout` (ms) closing when none do;
    with `ack` waiting for any client message after each batch. With `latest` each batch
    is the newest entries after the cursor, else every entry comes in order. A batch holds
    at most `max_bytes` of entries (or one entry); a client that takes no message for
    `send_timeout_s` is closed with 1008."""
    rt = runtime(socket)
    config = rt.config
    query = socket.query_params
    await socket.accept()
    try:
        sids = framing.split_stream_ids(sid)
        count = params.integer(query, "count", 1, high=config.max_count) or 1
        last = query.get("last_entry_id") or "$"
        first = cursors(sids, last)
        latest = params.flag(query, "latest", None)
        if latest is None:  # PTG's rule, on the whole value: live for `$`, `-` and `<ms>-<seq>` ids
            latest = "$" in last or "-" in last
        timeout = params.integer(query, "timeout", None, high=MAX_TIMEOUT_MS)
        ack = bool(params.flag(query, "ack"))
    except kernel.BadRequest as exc:
        await _close(socket, POLICY, exc.detail)
        return
    out = _Out(socket, ack)
    budget = Budget(config.max_bytes, sids, rt.store.entry_sizes)

    async def watch() -> None:
        """Notice the client leaving (even while Redis blocks) and collect acks."""
        with contextlib.suppress(_Closed):
            while True:
                await _receive(socket)
                if out.acks is not None:
                    await out.acks.put(None)

    async def stalled() -> None:
        """Returns once a write has waited `send_timeout_s` for the client to take the last message."""
        while out.since is None or time.monotonic() - out.since < config.send_timeout_s:
            await asyncio.sleep(config.send_timeout_s / 4)

    async def run() -> None:
        store = rt.store
        cursor = dict(first)
        dollar = [s for s, v in cursor.items() if v == "$"]
        if dollar:
            cursor.update(await store.last_ids(dollar))
        star = [s for s, v in cursor.items() if v == "*"]
        if star:  # from just before the newest `count` entries (fewer where they pass the budget)
            newest = await budget.read(lambda n: store.latest(star, n), count)
            cursor.update({s: "0-0" for s in star})
            cursor.update({s: framing.id_before(i) for s, i, _ in reversed(newest)})
        block = timeout or config.block_ms
        if latest:
            await _newest_batches(store, sids, cursor, count, block, timeout, out, budget)
        else:
            await _batches_in_order(store, cursor, count, block, timeout, out, budget)
        await _close(socket, 1000, "no entries within the timeout")

    watcher = asyncio.create_task(watch())
    runner = asyncio.create_task(run())
    guard = asyncio.create_task(stalled())
    try:
        await asyncio.wait([watcher, runner, guard], return_when=asyncio.FIRST_COMPLETED)
        if guard.done():
            runner.cancel()  # lets go of the entries it holds while the close waits for the client
            log.info("closing a pull whose client took no message for %g s", config.send_timeout_s)
            await _close(socket, POLICY, f"the client took no message for {config.send_timeout_s:g} s")
        elif runner.done() and not runner.cancelled() and runner.exception() is not None:
            exc = runner.exception()
            if not isinstance(exc, (_Closed, WebSocketDisconnect)):
                code, reason = _refusal(exc)  # type: ignore[arg-type]
                await _close(socket, code, reason)
    finally:
        for task in (watcher, runner, guard):
            task.cancel()
        for task in (watcher, runner, guard):
            with contextlib.suppress(BaseException):
                await task


async def _newest_batches(store: StreamStore, sids: list[str], cursor: dict[str, str], count: int, block: int,
                          timeout: int | None, out: _Out, budget: Budget) -> None:
    """Live view: each batch is the newest `count` entries (those within the budget) when it
    is sent, so nothing is read ahead. Returns when `timeout` passes without an entry."""
    while True:
        entries = await budget.read(lambda n: store.latest(sids, n, after=cursor), count)
        if not entries:
            entries = await store.read(cursor, budget.wanted(count), block)
        if not entries:
            if timeout:
                return
            continue
        entries = budget.fit(entries, newest=True)
        for s, i, _ in entries:
            cursor[s] = i
        await out.send(entries)


async def _batches_in_order(store: StreamStore, cursor: dict[str, str], count: int, block: int,
                            timeout: int | None, out: _Out, budget: Budget) -> None:
    """Every entry in order, in batches of `count` (fewer past the budget). One read fetches
    several batches of small entries, and the next read starts once the first batch of the
    last one is written, overlapping the rest of the sending and the acks: a client that stops
    reading holds up the message in the socket's buffer and one read, no more. Returns when
    `timeout` ms pass after the last batch was sent without an entry."""

    async def fetch(wanted: int, wait_ms: int) -> list[Entry]:
        while True:
            entries = await store.read(cursor, wanted, wait_ms)
            if entries or timeout:
                return budget.fit(entries)

    wanted = budget.wanted(count)
    pending = asyncio.ensure_future(fetch(wanted, block))
    sent_at: float | None = None  # when the last batch went out, if after `pending` began
    try:
        while True:
            entries = await pending
            if not entries:
                # the read may have begun while batches were still going out: wait the rest
                left = 0 if sent_at is None else int(block - (time.monotonic() - sent_at) * 1000)
                if left < 1:
                    return
                pending, sent_at = asyncio.ensure_future(fetch(wanted, left)), None
                continue
            for s, i, _ in entries:
                cursor[s] = i
            wanted = budget.wanted(_read_ahead(count, budget.size or 1))
            batches = list(_per_stream(entries, count))
            entries.clear()  # each batch's data goes once it is written
            # the batches go out from this task: handing each to another cost a task switch
            for n, batch in enumerate(batches):
                await out.write(batch)
                if n == 0:
                    pending = asyncio.ensure_future(fetch(wanted, block))
                await out.acked()
            sent_at = time.monotonic()
    finally:
        pending.cancel()
        with contextlib.suppress(BaseException):
            await pending


def _per_stream(entries: list[Entry], count: int) -> Iterator[list[Entry]]:
    """Batches of at most `count` entries per stream, as one XREAD COUNT `count` answers."""
    batch: list[Entry] = []
    taken: dict[str, int] = {}
    for entry in entries:
        if taken.get(entry[0], 0) == count:
            yield batch
            batch, taken = [], {}
        batch.append(entry)
        taken[entry[0]] = taken.get(entry[0], 0) + 1
    if batch:
        yield batch


def _read_ahead(count: int, entry_size: int) -> int:
    """Entries one read asks Redis for: `count`, or more while entries are small, up to
    about READ_AHEAD_BYTES (by the size of the largest entry just read)."""
    return max(count, min(READ_AHEAD_ENTRIES, READ_AHEAD_BYTES // max(entry_size, 1)))


ROUTES = [push, pull]
