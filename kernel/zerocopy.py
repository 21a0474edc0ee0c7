"""The ASGI zero-copy send extension (`http.response.zerocopysend`) on uvicorn.

uvicorn offers no way to send a file without copying it through Python, so a download
served by chunks costs two copies per byte and one core's worth of event loop. The
kernel serves with uvicorn, so it adds the extension itself: a response that finds
`http.response.zerocopysend` in `scope["extensions"]` may send an open file, which goes
to the connection's socket with `sendfile(2)`. Headers and the end of the response still
go through uvicorn, so keep-alive and its bookkeeping stay its own.

The file goes out in windows, each sent by a worker thread while the client keeps up: the
sends of several downloads run on several cores, and a window not yet in memory is read
from disk in that thread, not on the event loop (a model archive on an SD card reads at
tens of MB/s). A client that leaves the socket full for longer than PATIENCE gets the rest
of the window from `loop.sendfile`, which waits on the event loop without holding a
thread (the window read in first, by a thread, when it is not in memory). On TLS every
window goes through `loop.sendfile`, which encrypts through the transport. While the loop
waits so, a client that acknowledges no bytes for the send timeout has its connection
reset (Linux, where TCP says how many bytes its peer acknowledged; elsewhere the wait
lasts as long as the connection does).

Plugins call `send_file`, which uses the extension where it is offered and reads the file
in chunks elsewhere.

The extension is offered only where uvicorn's HTTP cycle looks as expected (its `send`
is a bound method of an object holding the transport and the bytes still owed); any
other server, or another uvicorn layout, serves the app unchanged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import select
import socket
import struct
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from litestar.enums import ASGIExtension
from litestar.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("kernel.zerocopy")

ZEROCOPY_SEND = ASGIExtension.ZERO_COPY_SEND_EXTENSION.value
CHUNK = 1024 * 1024  # per body message where the file must be read after all
WINDOW = 32 * 1024 * 1024  # sent by one worker thread (or one `loop.sendfile`)
#: Seconds a worker thread waits on a full socket before the event loop takes the wait over.
PATIENCE = 0.05


def with_zerocopy_send(app: ASGIApp, send_timeout: float = math.inf) -> ASGIApp:
    """Wrap `app` so its HTTP responses may use the zero-copy send extension; a client that
    takes none of a file for `send_timeout` seconds has its connection reset."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            cycle = getattr(send, "__self__", None)
            if _is_uvicorn_cycle(cycle):
                scope.setdefault("extensions", {})[ZEROCOPY_SEND] = {}  # type: ignore[index]
                send = _ZeroCopySend(cycle, send, send_timeout)
        await app(scope, receive, send)

    return asgi


def _is_uvicorn_cycle(cycle: Any) -> bool:
    """Whether `cycle` has what `_ZeroCopySend` uses; decided once per class, per request
    it costs one lookup."""
    kind = type(cycle)
    known = _CYCLE_CLASSES.get(kind)
    if known is None:
        known = _CYCLE_CLASSES[kind] = (
            isinstance(getattr(cycle, "transport", None), asyncio.Transport)
            and isinstance(getattr(cycle, "expected_content_length", None), int)
            and all(hasattr(cycle, name) for name in ("chunked_encoding", "disconnected", "response_started", "scope")))
    return known


_CYCLE_CLASSES: dict[type, bool] = {}


class _ZeroCopySend:
    """uvicorn's `send`, also accepting `http.response.zerocopysend` messages."""

    __slots__ = ("_cycle", "_send", "_send_timeout")

    def __init__(self, cycle: Any, send: Send, send_timeout: float) -> None:
        self._cycle, self._send, self._send_timeout = cycle, send, send_timeout

    async def __call__(self, message: Message) -> None:
        if message["type"] != ZEROCOPY_SEND:
            await self._send(message)
            return
        file, more_body = message["file"], message.get("more_body", False)
        offset, count = message.get("offset") or 0, message.get("count")
        cycle = self._cycle
        if not cycle.response_started or cycle.chunked_encoding or cycle.scope["method"] == "HEAD":
            # No header yet, chunk framing, or no body at all: uvicorn's own writes decide.
            await _send_chunks(self._send, file, offset, count, more_body)
            return
        if cycle.disconnected:
            return
        if count == 0:  # nothing to send (and `loop.sendfile` refuses a count of 0)
            await self._send({"type": "http.response.body", "body": b"", "more_body": more_body})
            return
        try:
            sent = await _sendfile(cycle.transport, file, offset, count, self._send_timeout)
        except OSError:
            # The client went away mid-file. Closing reports the loss to uvicorn, which then
            # treats this response as abandoned rather than short.
            cycle.transport.close()
            await asyncio.sleep(0)
            return
        cycle.expected_content_length -= sent
        await self._send({"type": "http.response.body", "body": b"", "more_body": more_body})


async def send_file(scope: Scope, send: Send, file: Any, offset: int = 0, count: int | None = None) -> None:
    """Send `count` bytes of the open binary `file` from `offset` (None: to its end) as the
    rest of a response's body, after its `http.response.start`: with `sendfile(2)` where the
    server offers the zero-copy send extension (`kernel serve` does), read in chunks where
    it does not (Litestar's test client, another ASGI server)."""
    if ZEROCOPY_SEND in (scope.get("extensions") or {}):
        await send({"type": ZEROCOPY_SEND, "file": file, "offset": offset, "count": count})  # type: ignore[typeddict-item]
    else:
        await _send_chunks(send, file, offset, count, more_body=False)


async def _send_chunks(send: Send, file: Any, offset: int, count: int | None, more_body: bool) -> None:
    """The bytes as body messages of CHUNK bytes, each read at its offset (from the page
    cache that is faster than a hop to a worker thread per chunk)."""
    fd = file.fileno()
    end = os.fstat(fd).st_size if count is None else offset + count
    while True:
        data = os.pread(fd, min(CHUNK, end - offset), offset) if offset < end else b""
        offset += len(data)
        last = not data or offset >= end
        await send({"type": "http.response.body", "body": data, "more_body": more_body or not last})
        if last:
            return


async def _sendfile(transport: asyncio.Transport, file: Any, offset: int, count: int | None,
                    send_timeout: float = math.inf) -> int:
    """`count` bytes of `file` from `offset` (None: to its end), window by window; the bytes
    sent (fewer where the file ends first)."""
    loop = asyncio.get_running_loop()
    fd = file.fileno()
    end = os.fstat(fd).st_size if count is None else offset + count
    sock = transport.get_extra_info("socket")
    # Plain TCP only: on TLS the bytes must go through the transport to be encrypted.
    threads = sock is not None and transport.get_extra_info("ssl_object") is None
    # Nothing is read from the connection meanwhile, as `loop.sendfile` does too: uvicorn
    # would answer what it read (a pipelined request it refuses, the client's half-close)
    # into the middle of the file.
    reading = transport.is_reading()
    transport.pause_reading()
    sent = 0
    try:
        while offset + sent < end:
            at, size = offset + sent, min(WINDOW, end - offset - sent)
            if transport.is_closing():
                raise ConnectionAbortedError("the connection closed mid-file")
            done, ended = 0, False
            if threads and not transport.get_write_buffer_size():
                # The thread gets descriptors of its own (and closes them): should this request
                # end while it still runs, the numbers cannot meanwhile name another socket or file.
                done, ended = await loop.run_in_executor(
                    _senders(), _send_window, os.dup(sock.fileno()), os.dup(fd), at, size)
            if done < size and not ended:
                # A client slower than PATIENCE: the loop waits for it, holding no thread.
                if not _in_memory(fd, at + done, size - done):
                    await loop.run_in_executor(_senders(), _read_in, os.dup(fd), at + done, size - done)
                if transport.is_closing():
                    raise ConnectionAbortedError("the connection closed mid-file")
                # Watched where the kernel sends the file: on TLS, `loop.sendfile` reads it on
                # the loop's default executor, which other work can keep from sending.
                more = await _unless_stalled(transport, loop.sendfile(transport, file, at + done, size - done),
                                             send_timeout if threads else math.inf)
                done, ended = done + more, more < size - done
            sent += done
            if ended:
                break
    finally:
        if reading and not transport.is_closing():
            transport.resume_reading()
    return sent


async def _unless_stalled(transport: asyncio.Transport, sending: Awaitable[int], send_timeout: float) -> int:
    """What `sending` (a `loop.sendfile`) returns; `ConnectionAbortedError`, the connection
    reset, if the client acknowledges no bytes for `send_timeout` seconds meanwhile (so
    within twice that of its last). Cancelled, it stops the send before it returns."""
    task = asyncio.ensure_future(sending)
    try:
        sock = transport.get_extra_info("socket")
        acked = _bytes_acked(sock) if math.isfinite(send_timeout) else None
        while acked is not None:
            finished, _ = await asyncio.wait({task}, timeout=send_timeout)
            if finished:
                break
            now = _bytes_acked(sock)
            if now == acked:
                log.info("reset a connection whose client took none of a file for %gs", send_timeout)
                # The send first (it waits on the socket, and an abort would leave it
                # waiting), then the connection.
                await _stop(transport, task)
                # Imported here: `kernel.connections` brings in uvicorn, which `import kernel`
                # does not otherwise need.
                from kernel.connections import reset

                reset(transport)
                raise ConnectionAbortedError("the client took none of the file")
            acked = now
        return await task
    except BaseException:
        await _stop(transport, task)
        raise


async def _stop(transport: asyncio.Transport, task: asyncio.Future[int]) -> None:
    """Cancel a `loop.sendfile` under way and wait until it is over. One cancelled while it
    waits for the transport's buffer to drain leaves that wait's future on the transport
    (CPython 3.11), which the connection's end would then fail on, with a logged traceback:
    it is cleared here."""
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    waiter = getattr(transport, "_empty_waiter", None)
    if waiter is not None and waiter.done():
        transport._reset_empty_waiter()  # type: ignore[attr-defined]


def _bytes_acked(sock: Any) -> int | None:
    """How many bytes the peer of TCP socket `sock` has acknowledged (Linux 4.2 and later:
    `tcpi_bytes_acked` of its TCP_INFO); None where the system does not say."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (AttributeError, OSError):
        return None
    return struct.unpack_from("Q", info, 120)[0] if len(info) >= 128 else None


@functools.cache
def _senders() -> ThreadPoolExecutor:
    """Threads of their own for sending (not the loop's default executor, which others
    use): each holds a download only while its socket takes data, PATIENCE at most after."""
    return ThreadPoolExecutor(4 * (os.cpu_count() or 1), thread_name_prefix="kernel-send")


def _send_window(sock: int, fd: int, offset: int, size: int) -> tuple[int, bool]:
    """Send a window with `sendfile(2)` from a worker thread: the sends of several
    downloads then run on several cores, and a disk read blocks this thread, not the event
    loop. Returns (bytes sent, whether the file ended); gives up early when the socket
    stays full for PATIENCE seconds. Closes `sock` and `fd`, its own duplicates."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        sent = 0
        while sent < size:
            try:
                done = os.sendfile(sock, fd, offset + sent, size - sent)
            except BlockingIOError:
                if not poller.poll(PATIENCE * 1000):
                    break
                continue
            if done == 0:
                return sent, True
            sent += done
        return sent, False
    finally:
        os.close(sock)
        os.close(fd)


def _in_memory(fd: int, offset: int, size: int) -> bool:
    """Whether the first and last page of a window are in the page cache (read ahead
    together, the pages between them almost always are). Where the system cannot tell
    (no `RWF_NOWAIT`), the window is sent as it is."""
    probe = [bytearray(1)]
    try:
        for at in (offset, offset + size - 1):
            os.preadv(fd, probe, at, os.RWF_NOWAIT)
    except BlockingIOError:
        return False
    except (AttributeError, OSError):
        return True
    return True


def _read_in(fd: int, offset: int, size: int) -> None:
    """Read a window into the page cache (in a worker thread: it may wait on the disk).
    Closes `fd`, its own duplicate."""
    try:
        end = offset + size
        while offset < end:
            chunk = os.pread(fd, min(CHUNK, end - offset), offset)
            if not chunk:
                return
            offset += len(chunk)
    finally:
        os.close(fd)
