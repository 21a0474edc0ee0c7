"""The listener is a TCP socket asyncio recognises, so responses are not held by Nagle."""

from __future__ import annotations

import socket
import statistics
import time

import httpx

from kernel.cli import _listen


def test_accepted_connections_have_nodelay():
    listener = _listen("127.0.0.1", 0)
    try:
        assert listener.proto == socket.IPPROTO_TCP
    finally:
        listener.close()


def test_keep_alive_responses_with_a_body_are_not_delayed(serve):
    server = serve("--plugins", "")
    with httpx.Client(base_url=server.url) as client:
        client.get("/-/ready")
        samples = []
        for _ in range(5):
            started = time.perf_counter()
            assert client.get("/-/ready").status_code == 200
            samples.append(time.perf_counter() - started)
    assert statistics.median(samples) < 0.030
