"""The real client, ptgctl, against `kernel serve --plugins streams` over real Valkey."""

from __future__ import annotations

import json
import os
import subprocess
import time

from tests.streams.conftest import PASSWORD, USER, Redis, run_ptgctl


def test_login_sets_the_cookie_ptgctl_reads_its_token_from(ptgctl_python, streams, tmp_path):
    out = run_ptgctl(ptgctl_python, tmp_path, streams, """
        print(json.dumps({"sub": api.token.get("sub"), "valid": bool(api.token),
                          "streams": api.streams.ls()}))
    """)
    assert out["sub"] == USER and out["valid"]
    assert isinstance(out["streams"], list)


def test_stream_metadata_round_trip(ptgctl_python, streams, tmp_path):
    out = run_ptgctl(ptgctl_python, tmp_path, streams, """
        stored = api.streams.update("meta-cam", desc="front camera", max_len=50)
        merged = api.streams.update("meta-cam", fps=30)
        api._post("data", "meta-cam", files={"entries": b"x"})
        info = api.streams.get("meta-cam")
        listed = api.streams.ls()
        deleted = api.streams.delete("meta-cam")
        print(json.dumps({"stored": stored, "merged": merged, "info": info, "listed": listed,
                          "deleted": deleted, "after": api.streams.ls()}))
    """)
    assert json.loads(out["stored"]) == {"desc": "front camera", "max_len": 50}
    assert json.loads(out["merged"]) == {"desc": "front camera", "max_len": 50, "fps": 30}
    assert out["info"]["sid"] == "meta-cam" and out["info"]["length"] == 1
    assert json.loads(out["info"]["meta"])["fps"] == 30
    assert "meta-cam" in out["listed"] and "meta-cam" not in out["after"]
    assert out["deleted"] == [1, 1, 1]


def test_push_single_entries_with_and_without_ack_then_pull_them_all(ptgctl_python, streams, tmp_path):
    out = run_ptgctl(ptgctl_python, tmp_path, streams, """
        async def main():
            acked = []
            async with api.data_push_connect("cam", ack=True) as ws:
                for i in range(3):
                    await ws.send_data(b"frame%d" % i)
            async with api.data_push_connect("cam") as ws:
                for i in range(3, 6):
                    await ws.send_data(b"frame%d" % i)
            got = []
            async with api.data_pull_connect("cam", last_entry_id="0", count=4, timeout=3000) as ws:
                while len(got) < 6:
                    got += await ws.recv_data()
            return [[sid, ts, data.decode()] for sid, ts, data in got]
        print(json.dumps(asyncio.run(main())))
    """)
    assert [d for _, _, d in out] == [f"frame{i}" for i in range(6)]
    assert {sid for sid, _, _ in out} == {"cam"}
    ids = [ts for _, ts, _ in out]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))


def test_batches_multi_stream_rest_reads_and_uploads(ptgctl_python, streams, tmp_path, redis_server: Redis):
    out = run_ptgctl(ptgctl_python, tmp_path, streams, """
        async def main():
            async with api.data_push_connect("*", ack=True) as ws:
                await ws.send_data([b"L1", b"R1-longer", b"L2"], sid=["left", "right", "left"])
            async with api.data_push_connect("batched", batch=True) as ws:
                await ws.send_data([b"a", b"bb", b"ccc"])
        asyncio.run(main())
        both = api.data("left+right", last_entry_id="0", count=10)
        latest = api.data("batched", count=2)
        uploaded = api.upload_data("uploads", b"file-bytes")
        up = api.data("uploads")
        print(json.dumps({
            "both": [[s, d.decode()] for s, _, d in both],
            "latest": [d.decode() for _, _, d in latest],
            "uploaded": uploaded, "up": [d.decode() for _, _, d in up],
        }))
    """)
    assert out["both"] == [["left", "L1"], ["left", "L2"], ["right", "R1-longer"]]
    assert out["latest"] == ["bb", "ccc"]
    assert len(out["uploaded"]) == 1 and out["up"] == ["file-bytes"]
    # what the server acknowledged is in Redis, under PTG's field name
    rows = redis_server.client().xrange("batched")
    assert [f[b"d"] for _, f in rows] == [b"a", b"bb", b"ccc"]


def test_pull_blocks_until_data_arrives_and_honours_last_entry_id_and_ack(ptgctl_python, streams, tmp_path):
    out = run_ptgctl(ptgctl_python, tmp_path, streams, """
        import time
        async def pusher(delay):
            await asyncio.sleep(delay)
            async with api.data_push_connect("live", ack=True) as ws:
                for i in range(3):
                    await ws.send_data(b"live%d" % i)

        async def main():
            t0 = time.monotonic()
            task = asyncio.create_task(pusher(0.8))
            async with api.data_pull_connect("live", latest=False) as ws:  # from now on, in order
                first = await ws.recv_data()
                waited = time.monotonic() - t0
            await task
            ids = [ts for _, ts, _ in api.data("live", last_entry_id="0", count=10)]
            after = []
            async with api.data_pull_connect("live", last_entry_id=ids[0], latest=False, ack=True, timeout=1000) as ws:
                while len(after) < 2:
                    after += await ws.recv_data()
            return {"first": first[0][2].decode(), "waited": waited,
                    "after": [d.decode() for _, _, d in after]}
        print(json.dumps(asyncio.run(main())))
    """)
    assert out["first"] == "live0"
    assert out["waited"] >= 0.7  # it blocked for the pusher, past several server-side read rounds
    assert out["after"] == ["live1", "live2"]


def test_pull_is_a_live_view_by_default_for_ids_holding_a_dash_as_in_ptg(ptgctl_python, streams, tmp_path):
    """PTG's default: `latest` when `last_entry_id`, all of it, holds `$` or `-`; a live view
    sends only the newest entry after the cursor. `latest=` given explicitly wins."""
    out = run_ptgctl(ptgctl_python, tmp_path, streams, """
        async def main():
            async with api.data_push_connect("dash", ack=True) as ws:
                for i in range(1, 4):
                    await ws.send_data(b"e%d" % i)
            e1 = api.data("dash", last_entry_id="0")[0][1]

            async def pull(sid="dash", **kw):
                got = []
                async with api.data_pull_connect(sid, timeout=300, **kw) as ws:
                    while True:  # until the server closes after the timeout; ptgctl swallows the close
                        got += await ws.recv_data()
                return [d.decode() for _, _, d in got]

            queries = {"id": {"last_entry_id": e1}, "true": {"last_entry_id": True},
                       "0-0": {"last_entry_id": "0-0"}, "0": {"last_entry_id": 0},
                       "ms": {"last_entry_id": e1.split("-")[0]},
                       "id, latest=False": {"last_entry_id": e1, "latest": False},
                       "true, latest=False": {"last_entry_id": True, "latest": False},
                       "0, latest=True": {"last_entry_id": 0, "latest": True},
                       "0+$": {"sid": "dash+nothing", "last_entry_id": "0+$"}}
            return {name: await pull(**kw) for name, kw in queries.items()}
        print(json.dumps(asyncio.run(main())))
    """)
    assert out == {"id": ["e3"], "true": ["e3"], "0-0": ["e3"], "0": ["e1", "e2", "e3"], "ms": ["e2", "e3"],
                   "id, latest=False": ["e2", "e3"], "true, latest=False": ["e1", "e2", "e3"],
                   "0, latest=True": ["e3"], "0+$": ["e3"]}


def test_redis_restarted_in_the_middle_of_a_pull(ptgctl_python, streams, tmp_path, redis_server: Redis):
    client = redis_server.client()
    client.xadd("restart", {b"d": b"before"})
    script = f"URL, USER, PASSWORD = {streams.url!r}, {USER!r}, {PASSWORD!r}\n" + """
import asyncio, json, sys, ptgctl
api = ptgctl.API(url=URL, username=USER, password=PASSWORD, should_log=False)
async def main():
    got = []
    async with api.data_pull_connect("restart", last_entry_id="0", timeout=15000) as ws:
        while len(got) < 2:
            got += await ws.recv_data()
            print("got", len(got), flush=True)
    print(json.dumps([d.decode() for _, _, d in got]), flush=True)
asyncio.run(main())
"""
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.Popen([str(ptgctl_python), "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline().strip() == "got 1"
        redis_server.stop()
        time.sleep(1.0)  # the pull's blocking read fails and is retried meanwhile
        redis_server.start()
        redis_server.client().xadd("restart", {b"d": b"after"})
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out.splitlines()[-1]) == ["before", "after"]


def test_large_entries_come_fewer_to_a_message_within_what_ptgctl_takes(ptgctl_python, streams, tmp_path,
                                                                         redis_server: Redis):
    """ptgctl takes WebSocket messages of 16 MiB at most (websockets' default): four 6 MB
    entries asked for at once come two to a message, pulled or read over REST."""
    client = redis_server.client()
    for i in range(4):
        client.xadd("large-ptg", {b"d": bytes([i]) * 6_000_000})
    out = run_ptgctl(ptgctl_python, tmp_path, streams, """
        async def main():
            messages = []
            async with api.data_pull_connect("large-ptg", last_entry_id="0", latest=False, count=4,
                                             timeout=1000) as ws:
                while sum(len(m) for m in messages) < 4:
                    messages.append([(ts, len(data), data[:1].hex()) for _, ts, data in await ws.recv_data()])
            first = api.data("large-ptg", last_entry_id="0", count=4)
            rest = api.data("large-ptg", last_entry_id=first[-1][1], count=4)
            return {"messages": messages, "rest": [[len(d), d[:1].hex()] for _, _, d in first + rest]}
        print(json.dumps(asyncio.run(main())))
    """)
    messages = out["messages"]
    assert [byte for m in messages for _, _, byte in m] == ["00", "01", "02", "03"]
    assert all(sum(size for _, size, _ in m) <= 2**24 for m in messages)
    assert out["rest"] == [[6_000_000, f"0{i}"] for i in range(4)]
