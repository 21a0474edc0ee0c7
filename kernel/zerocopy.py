"""The ASGI zero-copy send extension (`http.response.zerocopysend`) on uvicorn.

uvicorn offers no way to send a file without copying it through Python, so a download
served by chunks costs two copies per byte and one core's worth of event loop. The
kernel serves with uvicorn, so it adds the extension itself: a response that finds
`http.response.zerocopysend` in `scope["extensions"]` may send an open file, which goes
to the connection's socket with `loop.sendfile` (the `sendfile(2)` system call on plain
TCP, asyncio's own read-and-write on TLS). Headers and the end of the response still go
through uvicorn, so keep-alive and its bookkeeping stay its own.

`sendfile(2)` on a non-blocking socket still waits for the disk when the file's pages are
not in memory, which would stall every request the event loop serves (a model archive on
an SD card reads at tens of MB/s). So the file goes out in windows, and a window whose
first or last page is not in memory is read in a worker thread before it is sent.

The extension is offered only where uvicorn's HTTP cycle looks as expected (its `send`
is a bound method of an object holding the transport and the bytes still owed); any
other server, or another uvicorn layout, serves the app unchanged.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from litestar.enums import ASGIExtension
from litestar.types import ASGIApp, Message, Receive, Scope, Send

ZEROCOPY_SEND = ASGIExtension.ZERO_COPY_SEND_EXTENSION.value
CHUNK = 1024 * 1024  # per body message where the file must be read after all
WINDOW = 8 * 1024 * 1024  # sent by one `loop.sendfile`, after reading it in if it is not in memory


def with_zerocopy_send(app: ASGIApp) -> ASGIApp:
    """Wrap `app` so its HTTP responses may use the zero-copy send extension."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            cycle = getattr(send, "__self__", None)
            if _is_uvicorn_cycle(cycle):
                scope.setdefault("extensions", {})[ZEROCOPY_SEND] = {}  # type: ignore[index]
                send = _ZeroCopySend(cycle, send)
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

    __slots__ = ("_cycle", "_send")

    def __init__(self, cycle: Any, send: Send) -> None:
        self._cycle, self._send = cycle, send

    async def __call__(self, message: Message) -> None:
        if message["type"] != ZEROCOPY_SEND:
            await self._send(message)
            return
        file, more_body = message["file"], message.get("more_body", False)
        offset, count = message.get("offset") or 0, message.get("count")
        cycle = self._cycle
        if not cycle.response_started or cycle.chunked_encoding or cycle.scope["method"] == "HEAD":
            # No header yet, chunk framing, or no body at all: uvicorn's own writes decide.
            await self._send_read(file, offset, count, more_body)
            return
        if cycle.disconnected:
            return
        if count == 0:  # nothing to send (and `loop.sendfile` refuses a count of 0)
            await self._send({"type": "http.response.body", "body": b"", "more_body": more_body})
            return
        try:
            sent = await _sendfile(cycle.transport, file, offset, count)
        except OSError:
            # The client went away mid-file. Closing reports the loss to uvicorn, which then
            # treats this response as abandoned rather than short.
            cycle.transport.close()
            await asyncio.sleep(0)
            return
        cycle.expected_content_length -= sent
        await self._send({"type": "http.response.body", "body": b"", "more_body": more_body})

    async def _send_read(self, file: Any, offset: int, count: int | None, more_body: bool) -> None:
        file.seek(offset)
        while True:
            chunk = file.read(CHUNK if count is None else min(CHUNK, count))
            if count is not None:
                count -= len(chunk)
            last = not chunk or count == 0
            await self._send({"type": "http.response.body", "body": chunk, "more_body": more_body or not last})
            if last:
                return


async def _sendfile(transport: asyncio.Transport, file: Any, offset: int, count: int | None) -> int:
    """`count` bytes of `file` from `offset` (None: to its end) with `loop.sendfile`, window
    by window; the bytes sent (fewer where the file ends first)."""
    loop = asyncio.get_running_loop()
    fd = file.fileno()
    end = os.fstat(fd).st_size if count is None else offset + count
    sent = 0
    while offset + sent < end:
        at, size = offset + sent, min(WINDOW, end - offset - sent)
        if not _in_memory(fd, at, size):
            await asyncio.to_thread(_read_in, fd, at, size)
        done = await loop.sendfile(transport, file, at, size)
        sent += done
        if done < size:
            break
    return sent


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
    """Read a window into the page cache (in a worker thread: it may wait on the disk)."""
    end = offset + size
    while offset < end:
        chunk = os.pread(fd, min(CHUNK, end - offset), offset)
        if not chunk:
            return
        offset += len(chunk)
