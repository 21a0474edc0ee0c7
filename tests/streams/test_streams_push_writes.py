"""Pushed entries land in Redis byte for byte, under the ids asked for, and a refused
entry leaves the server's Redis connections in step for the next pushes; posted entries
land in the order of their parts."""

from __future__ import annotations

import asyncio
import json
import os

import httpx
import websockets

from tests.streams.conftest import Redis
from tests.streams.test_streams_robustness import login, ws_url


def test_mixed_sizes_ids_and_streams_are_stored_exactly(streams, redis_server: Redis):
    headers = login(streams)
    entries = [("pw-a", "5-1", os.urandom(10)), ("pw-ü", "*", os.urandom(200_000)), ("pw-a", "7-*", os.urandom(20_000)),
               ("pw-a", "*", b""), ("pw-ü", "*", os.urandom(3))]
    header, blob, end = [], b"", 0
    for sid, entry_id, data in entries:
        end += len(data)
        header.append([sid, entry_id, end])
        blob += data

    async def push() -> str:
        async with websockets.connect(ws_url(streams, "/data/*/push?batch=true&ack=true"),
                                      additional_headers=headers, max_size=2**22) as ws:
            await ws.send(json.dumps(header))
            await ws.send(blob)
            return await ws.recv()

    ids = asyncio.run(push()).split(",")
    assert ids[0] == "5-1" and ids[2] == "7-0"
    client = redis_server.client()
    stored = {sid: [(i.decode(), f[b"d"]) for i, f in client.xrange(sid)] for sid in ("pw-a", "pw-ü")}
    assert stored["pw-a"] == [(ids[0], entries[0][2]), (ids[2], entries[2][2]), (ids[3], b"")]
    assert stored["pw-ü"] == [(ids[1], entries[1][2]), (ids[4], entries[4][2])]


def test_a_refused_entry_closes_the_push_and_later_pushes_still_get_their_own_ids(streams, redis_server: Redis):
    headers = login(streams)
    url = ws_url(streams, "/data/pw-r/push?batch=true&ack=true")

    async def refused() -> tuple[list[str], int, str]:
        acks = []
        async with websockets.connect(url, additional_headers=headers) as ws:
            await ws.send(json.dumps([["pw-r", "9-1", 1]]))
            await ws.send(b"a")
            acks.append(await ws.recv())
            # the second entry's id is not above the first: Redis refuses it, not the third
            await ws.send(json.dumps([["pw-r", "9-2", 1], ["pw-r", "9-1", 2], ["pw-r", "9-3", 3]]))
            await ws.send(b"bcd")
            try:
                acks.append(await ws.recv())
            except websockets.ConnectionClosed as exc:
                return acks, exc.rcvd.code, exc.rcvd.reason
        raise AssertionError("not closed")

    acks, code, reason = asyncio.run(refused())
    assert acks == ["9-1"] and code == 1008 and "refused" in reason
    # an unacknowledged message may be stored in part; what was acknowledged is there
    assert redis_server.client().xrange("pw-r")[0] == (b"9-1", {b"d": b"a"})

    async def pushes() -> list[str]:
        async def one(k: int) -> str:
            async with websockets.connect(ws_url(streams, f"/data/pw-n{k}/push?ack=true"), additional_headers=headers) as ws:
                await ws.send(b"x" * k)
                return await ws.recv()
        return await asyncio.gather(*[one(k) for k in range(1, 21)])

    ids = asyncio.run(pushes())
    client = redis_server.client()
    for k, entry_id in enumerate(ids, 1):
        assert client.xrange(f"pw-n{k}") == [(entry_id.encode(), {b"d": b"x" * k})]


def test_posted_parts_are_stored_in_the_order_they_arrive_whatever_their_field_names(streams, redis_server: Redis):
    files = [("zzz", ("1.bin", b"1")), ("aaa", ("2.bin", b"2")), ("mmm", ("3.bin", b"3")), ("aaa", ("4.bin", b"4"))]
    r = httpx.post(streams.url + "/data/po-ord", headers=login(streams), files=files, data={"note": "a field, no entry"})
    assert r.status_code == 201
    assert redis_server.client().xrange("po-ord") == [(i.encode(), {b"d": d}) for i, d in zip(r.json(), b"1 2 3 4".split())]
