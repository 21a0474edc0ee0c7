"""Clients over raw sockets on loopback that read slowly or not at all, for the tests of
what a server does with them."""

from __future__ import annotations

import socket
import time

MIB = 1024 * 1024


def small_window(server, rcvbuf: int = 4096) -> socket.socket:
    """A connection whose receive buffer is small, so a client that reads nothing soon
    fills it and the server's sends back up."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and the seconds that took (a
    server that keeps it open past the socket's timeout fails the test)."""
    started, data = time.monotonic(), bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:  # closed with bytes of ours still unread
        pass
    return bytes(data), time.monotonic() - started


def read_paced(sock: socket.socket) -> tuple[bytes, float]:
    """Everything until the server closes, read at about 10 MiB/s (a pause of 0.1 s after
    each MiB), and the seconds that took: a slow client that never stops reading."""
    started, data, paced = time.monotonic(), bytearray(), 0
    while chunk := sock.recv(65536):
        data += chunk
        if len(data) >= paced + MIB:
            paced = len(data)
            time.sleep(0.1)
    return bytes(data), time.monotonic() - started
