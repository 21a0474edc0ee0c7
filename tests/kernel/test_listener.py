"""The listener is a TCP socket asyncio recognises, so responses are not held by Nagle."""

from __future__ import annotations

import socket

from kernel.cli import _listen


def test_accepted_connections_have_nodelay():
    # asyncio sets TCP_NODELAY on accepted connections only when it knows the listener is
    # TCP; without it every keep-alive response with a body waited ~40 ms for Nagle.
    listener = _listen("127.0.0.1", 0)
    try:
        assert listener.proto == socket.IPPROTO_TCP
    finally:
        listener.close()
