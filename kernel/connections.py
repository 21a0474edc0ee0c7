"""Guards on client connections, which uvicorn leaves to the application.

uvicorn's httptools protocol keeps a connection open for as long as its client sends
nothing, or sends a request's headers a line at a time (its keep-alive timer runs only
between requests, and stops at the next request's first byte), and it takes headers of
any size. Each such connection holds a file descriptor; once the process has none left,
asyncio's accept loop (Python 3.11) logs a traceback and schedules a retry for every slot
of the listener's backlog, and again on each retry: thousands a second, on a full core.

Nor does uvicorn give up on a client that stops reading: a response or WebSocket message
waits in the connection's write buffer for as long as the client leaves its receive window
closed (TCP keeps such a connection alive), and closing the connection waits for that
buffer to drain. Each such client pins what the server last sent it.

`http_protocol` is uvicorn's protocol with a deadline for each request's headers, a limit
on their size (431) and a cap on open connections below the open-file limit, past which a
new connection is closed at once; `ws_protocol` is its WebSocket protocol. Both abort a
connection whose client has taken no bytes for a send timeout while the server waits to
send it more, as nginx's `send_timeout` does. `raise_open_file_limit` raises the open-file
limit as far as the system allows, and `quiet_accept_failures` logs a failing accept once
in a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import resource
import socket
import struct
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

log = logging.getLogger("kernel.connections")

#: Largest request line and headers accepted, in bytes (nginx takes 32 KiB, Node 16 KiB).
MAX_HEADER_SIZE = 64 * 1024
#: What asyncio says when accept() fails for want of descriptors or memory.
ACCEPT_FAILED = "socket.accept() out of system resource"
#: Seconds between two warnings about one flood.
WARN_EVERY = 10.0

_TOO_LARGE_BODY = b"Request header fields too large"
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
              b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TOO_LARGE_BODY), _TOO_LARGE_BODY))


class _Every:
    """True at most once per `seconds`: for a warning that a flood would repeat."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.last = seconds, -math.inf

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True


_warn_accept, _warn_shed = _Every(WARN_EVERY), _Every(WARN_EVERY)


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (the soft one is
    often 1024, and each connection holds a file), log it, and return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # macOS refuses an unlimited one
            pass
    log.info("open files: at most %s", "unlimited" if soft == resource.RLIM_INFINITY else soft)
    return soft


def http_protocol(header_timeout: float, send_timeout: float, open_files: int) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol (for `uvicorn.Config(http=...)`) closing a connection
    whose request headers take longer than `header_timeout` seconds, and answering headers
    past MAX_HEADER_SIZE with 431. A new connection is closed at once where the open files
    would leave fewer than a quarter of `open_files` (at most 1024) to files, models and
    pipes: accept() would soon fail, and a connection left in the backlog waits unanswered.
    A connection whose client takes nothing for `send_timeout` seconds is aborted."""
    cap = math.inf if open_files == resource.RLIM_INFINITY else open_files - min(open_files // 4, 1024)
    return type("KernelHttpProtocol", (_StallGuard, _GuardedProtocol),
                {"header_timeout": header_timeout, "max_connections": cap, "send_timeout": send_timeout})


def ws_protocol(send_timeout: float) -> type[asyncio.Protocol] | None:
    """uvicorn's WebSocket protocol (for `uvicorn.Config(ws=...)`), aborting a connection
    whose client takes nothing for `send_timeout` seconds; None where uvicorn has none."""
    if AutoWebSocketsProtocol is None:
        return None
    return type("KernelWebSocketProtocol", (_StallGuard, AutoWebSocketsProtocol), {"send_timeout": send_timeout})


def quiet_accept_failures(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A loop exception handler logging a failing accept in one line every WARN_EVERY
    seconds, where asyncio would log a traceback for every try; others as asyncio does."""
    if context.get("message") != ACCEPT_FAILED:
        loop.default_exception_handler(context)
    elif _warn_accept():
        log.warning("cannot accept connections: %s (retried every second; repeats not logged for %ds)",
                    context.get("exception"), WARN_EVERY)


async def _headers_too_large(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 431, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(_TOO_LARGE_BODY)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": _TOO_LARGE_BODY})


def reset(transport: asyncio.Transport) -> None:
    """Close `transport` at once with a TCP reset: what its buffer and its socket's own send
    queue hold is dropped, where a close would go on trying to send it to a client that
    takes nothing."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _StallGuard:
    """Put before a uvicorn protocol class. While the server waits on its client, with the
    transport's write buffer full (writing paused) or with a connection closed but not yet
    drained, that buffer must shrink at least once every `send_timeout` seconds, or the
    connection is `reset`. A slow client that keeps taking bytes is
    never cut off. The wait is checked from when writing pauses, and every `send_timeout`
    seconds otherwise (a close is not seen when it happens), so a closing connection is cut
    within twice that: one timer per connection. Nothing is written while the server waits
    (uvicorn holds the application's sends), so a buffer that has not shrunk has sent nothing."""

    send_timeout: float
    transport: asyncio.Transport
    _stall_timer: asyncio.TimerHandle | None = None
    _paused = False
    #: The write buffer's size at the last look while the server waited; None otherwise.
    _unsent: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._watch(None)

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        self._paused = True
        self._watch(self.transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        self._paused = False
        self._unsent = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watch()
        super().connection_lost(exc)  # type: ignore[misc]

    def _watch(self, unsent: int | None) -> None:
        """Look again in `send_timeout` seconds, comparing with `unsent`."""
        self._stop_watch()
        self._unsent = unsent
        self._stall_timer = asyncio.get_running_loop().call_later(self.send_timeout, self._check_progress)

    def _stop_watch(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _check_progress(self) -> None:
        self._stall_timer = None
        transport = self.transport
        if transport.get_protocol() is not self:  # a WebSocket now: its protocol watches
            return
        unsent = transport.get_write_buffer_size()
        waiting = unsent > 0 and (self._paused or transport.is_closing())
        if waiting and self._unsent is not None and unsent >= self._unsent:
            log.info("aborted a connection whose client took nothing for %gs (%d bytes unsent)",
                     self.send_timeout, unsent)
            reset(transport)
            return
        self._watch(unsent if waiting else None)


class _GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit for request headers,
    and a cap on open connections (set by `http_protocol`)."""

    header_timeout: float
    max_connections: float
    #: Since when (loop time) the server waits for a request's headers: from the
    #: connection's start and from the end of each response; None while it handles one.
    #: One timer per connection checks it, rather than one set and cancelled per request.
    _waiting_since: float | None = None
    _deadline: asyncio.TimerHandle | None = None
    #: Bytes received while the server waits for a request's headers (but for those of the
    #: read that ended the previous request); None from the end of the headers to the end
    #: of the request.
    _header_bytes: int | None = 0
    #: Whether a request's body is still arriving (from its headers' end to its own).
    _in_message = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            if _warn_shed():
                log.warning("%d connections open, all the open-file limit allows: closing new ones "
                            "(repeats not logged for %ds)", len(self.connections) - 1, WARN_EVERY)
            transport.close()
            return
        self._waiting_since = self.loop.time()
        self._deadline = self.loop.call_later(self.header_timeout, self._check_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_bytes is not None:
            self._header_bytes += len(data)
        super().data_received(data)
        # Counted here, as they arrive: httptools keeps a header in memory until it ends.
        if self._header_bytes is not None and self._header_bytes > MAX_HEADER_SIZE and not self.transport.is_closing():
            if self.cycle is None or self.cycle.response_complete:  # else it would land in a response under way
                self.transport.write(_TOO_LARGE)
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._waiting_since = self._header_bytes = None
        self._in_message = True
        # Measured whole: headers that ended within a read were not checked as they came.
        # The request is answered, as uvicorn answers past `limit_concurrency`, by an app
        # of its own.
        if len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) > MAX_HEADER_SIZE:
            self.app = _headers_too_large  # the connection closes after it
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._header_bytes = 0
        self._in_message = False
        super().on_message_complete()
        if self.cycle is not None and self.cycle.response_complete:  # answered before its body ended
            self._waiting_since = self.loop.time()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Unless a pipelined request is under way, or this one's body is still arriving (an
        # answer that did not need it: a 404, a 401), the client is to send the next one
        # (uvicorn's keep-alive timer runs too, but stops at its first byte).
        if self.cycle.response_complete and not self._in_message:
            self._waiting_since = self.loop.time()

    def _check_deadline(self) -> None:
        if self.transport.is_closing() or self.transport.get_protocol() is not self:  # closed, or a WebSocket now
            return
        since = self._waiting_since
        if since is None:  # a request is being handled: look again later
            since = self.loop.time()
        elif self.loop.time() >= since + self.header_timeout:
            self.transport.close()
            return
        self._deadline = self.loop.call_at(since + self.header_timeout, self._check_deadline)
