"""Pulls read Redis ahead of the socket: every entry still arrives once, in order, in
batches of at most `count` per stream, acknowledged or not."""

from __future__ import annotations

import asyncio
import json

import httpx
import websockets

from tests.streams.conftest import PASSWORD, USER


def _headers(server) -> dict[str, str]:
    token = httpx.post(server.url + "/token", data={"username": USER, "password": PASSWORD}).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def _pull(server, path: str, headers: dict[str, str], n: int, ack: bool) -> list[list]:
    url = server.url.replace("http://", "ws://") + path
    batches = []
    async with websockets.connect(url, additional_headers=headers) as ws:
        while sum(len(b) for b in batches) < n:
            header = json.loads(await asyncio.wait_for(ws.recv(), 10))
            blob = await asyncio.wait_for(ws.recv(), 10)
            ends = [start for _, _, start in header[1:]] + [len(blob)]
            batches.append([(sid, i, blob[start:end]) for (sid, i, start), end in zip(header, ends)])
            if ack:
                await ws.send(b"")
    return batches


def test_small_entries_arrive_once_in_order_with_or_without_ack(streams, redis_server):
    client = redis_server.client()
    sent = [b"entry-%04d" % i for i in range(700)]
    with client.pipeline(transaction=False) as pipe:
        for data in sent:
            pipe.xadd("many", {b"d": data})
        ids = [i.decode() for i in pipe.execute()]
    headers = _headers(streams)
    for ack in (False, True):
        query = f"?last_entry_id=0&latest=false&count=3&ack={ack}"
        batches = asyncio.run(_pull(streams, "/data/many/pull" + query, headers, len(sent), ack))
        assert all(1 <= len(b) <= 3 for b in batches)
        got = [e for b in batches for e in b]
        assert [d for _, _, d in got] == sent
        assert [i for _, i, _ in got] == ids


def test_several_streams_keep_count_per_stream_and_each_streams_order(streams, redis_server):
    client = redis_server.client()
    for i in range(50):
        client.xadd("left", {b"d": b"L%d" % i})
        client.xadd("right", {b"d": b"R%d" % i})
    batches = asyncio.run(_pull(streams, "/data/left+right/pull?last_entry_id=0&count=2", _headers(streams), 100, False))
    for batch in batches:
        per_stream = [sid for sid, _, _ in batch]
        assert per_stream.count("left") <= 2 and per_stream.count("right") <= 2
    got = [e for b in batches for e in b]
    assert [d for s, _, d in got if s == "left"] == [b"L%d" % i for i in range(50)]
    assert [d for s, _, d in got if s == "right"] == [b"R%d" % i for i in range(50)]


def test_a_timeout_counts_from_the_last_batch_sent_even_to_a_slow_consumer(streams, redis_server):
    """The next read waits in Redis while a slow consumer still takes the last read's
    batches; an entry that arrives after that read gave up but within `timeout` of the last
    send is still delivered before the socket closes."""
    client = redis_server.client()
    with client.pipeline(transaction=False) as pipe:
        for i in range(200):
            pipe.xadd("slow", {b"d": b"s%d" % i})
        pipe.execute()
    url = streams.url.replace("http://", "ws://") + "/data/slow/pull?last_entry_id=0&count=1&ack=true&timeout=400"

    async def consume() -> tuple[list[bytes], int]:
        got: list[bytes] = []
        async with websockets.connect(url, additional_headers=_headers(streams)) as ws:
            started = asyncio.get_running_loop().time()
            try:
                while True:
                    json.loads(await asyncio.wait_for(ws.recv(), 10))
                    got.append(await asyncio.wait_for(ws.recv(), 10))
                    if len(got) == 150:
                        # past the waiting read's 400 ms, while batches are still going out
                        await asyncio.sleep(max(0.0, started + 0.6 - asyncio.get_running_loop().time()))
                        client.xadd("slow", {b"d": b"late"})
                    await asyncio.sleep(0.003)
                    await ws.send(b"")
            except websockets.ConnectionClosed as exc:
                return got, exc.rcvd.code
        raise AssertionError("not closed")

    got, code = asyncio.run(consume())
    assert got == [b"s%d" % i for i in range(200)] + [b"late"] and code == 1000
