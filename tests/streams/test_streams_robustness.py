"""Bad input, auth refusals, bounded buffering and Redis outages, over real HTTP and WebSockets."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import Server, run_kernel
from tests.streams.conftest import PASSWORD, USER, Redis, start_streams


def login(server: Server) -> dict[str, str]:
    r = httpx.post(server.url + "/token", data={"username": USER, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def ws_url(server: Server, path: str) -> str:
    return server.url.replace("http://", "ws://") + path


def _claims(token: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def test_login_refusals_use_ptgs_error_shape(streams):
    wrong = httpx.post(streams.url + "/token", data={"username": USER, "password": "nope"})
    assert wrong.status_code == 401 and wrong.json() == {"detail": "Incorrect username or password"}
    # PTG's development rule (password == user name) is off unless asked for
    dev = httpx.post(streams.url + "/token", data={"username": "test", "password": "test"})
    assert dev.status_code == 401
    missing = httpx.post(streams.url + "/token", data={"username": USER})
    assert missing.status_code == 400 and "password" in missing.json()["detail"]
    assert PASSWORD not in streams.output()


def test_a_flood_of_logins_past_the_login_queue_is_told_to_come_back(tmp_path, redis_server: Redis, users_file: Path):
    server = start_streams(tmp_path / "home", redis_server.url, "--streams-users", str(users_file),
                           "--streams-login-threads", "1", "--streams-login-queue", "2")
    try:
        async def flood() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60,
                                         limits=httpx.Limits(max_connections=60)) as client:
                return await asyncio.gather(*[client.post("/token", data={"username": name, "password": "wrong"})
                                              for name in [USER, "nobody"] * 30])

        answers = asyncio.run(flood())
        assert {r.status_code for r in answers} == {401, 503}  # known and unknown users alike
        busy = next(r for r in answers if r.status_code == 503)
        assert busy.json() == {"detail": "too many logins at once; try again"} and busy.headers["Retry-After"] == "1"
        assert httpx.post(server.url + "/token", data={"username": USER, "password": PASSWORD}).status_code == 200
    finally:
        server.stop()


def test_token_exp_must_be_a_positive_number_of_seconds(streams):
    form = {"username": USER, "password": PASSWORD}
    for exp in ("abc", "-5", "0", "1.5"):
        r = httpx.post(streams.url + "/token", params={"exp": exp}, data=form)
        assert r.status_code == 400 and "exp" in r.json()["detail"], exp
    for exp, ttl in (("60", 60), ("999999999", 2592000)):  # at most --streams-token-ttl
        token = httpx.post(streams.url + "/token", params={"exp": exp}, data=form).json()["access_token"]
        claims = _claims(token)
        assert claims["exp"] - claims["iat"] == ttl


def test_invalid_or_missing_tokens_are_refused_never_anonymous(streams, tmp_path):
    url = streams.url + "/streams/"
    assert httpx.get(url).status_code == 401
    forged = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJwdGciLCJleHAiOjE2NTI1NDU3MTl9.8S6dal-Q97TfJZG7rYLQWe5n3IovU9qCmtPYo7voNN4"
    for kwargs in ({"params": {"token": forged}}, {"headers": {"Authorization": f"Bearer {forged}"}},
                   {"cookies": {"authorization": f"Bearer {forged}"}}, {"headers": {"Authorization": "Basic eDp5"}}):
        r = httpx.get(url, **kwargs)
        assert r.status_code == 401, kwargs
        assert set(r.json()) == {"detail"}
    # a kernel token for another plugin's scope is not a streams token
    other = run_kernel(["token", "--scope", "oip", "--ttl", "60"], Path(streams.log).parent).stdout.strip()
    assert httpx.get(url, headers={"Authorization": f"Bearer {other}"}).status_code == 403
    # each place PTG's clients put a good token works
    token = login(streams)["Authorization"].split()[1]
    assert httpx.get(url, params={"token": token}).status_code == 200
    assert httpx.get(url, cookies={"authorization": f'"Bearer {token}"'}).status_code == 200

    async def handshake(query: str) -> int:
        try:
            async with websockets.connect(ws_url(streams, "/data/x/pull" + query)):
                return 101
        except websockets.InvalidStatus as exc:
            return exc.response.status_code

    # a handshake is refused with 403 whatever is wrong with the token
    assert asyncio.run(handshake("")) == 403
    assert asyncio.run(handshake(f"?token={forged}")) == 403
    assert asyncio.run(handshake(f"?token={other}")) == 403
    assert asyncio.run(handshake(f"?token={token}")) == 101
    form = {"username": USER, "password": PASSWORD}
    short = httpx.post(streams.url + "/token", params={"exp": "1"}, data=form).json()["access_token"]
    time.sleep(max(0.0, _claims(short)["exp"] - time.time() + 0.05))
    expired = httpx.get(url, params={"token": short})
    assert expired.status_code == 401 and expired.json() == {"detail": "Token expired"}
    assert asyncio.run(handshake(f"?token={short}")) == 403
    assert token not in streams.output() and forged not in streams.output()


@pytest.mark.parametrize(("path", "params", "needle"), [
    ("/data/cam", {"count": "0"}, "count"),
    ("/data/cam", {"count": "many"}, "count"),
    ("/data/cam", {"count": "100000"}, "count"),
    ("/data/cam", {"last_entry_id": "yesterday"}, "last_entry_id"),
    ("/data/a b", {}, "stream id"),
    ("/data/a+a", {}, "twice"),
    ("/streams/", {"info": "perhaps"}, "info"),
])
def test_bad_queries_answer_400_with_detail(streams, path, params, needle):
    r = httpx.get(streams.url + path, params=params, headers=login(streams))
    assert r.status_code == 400 and needle in r.json()["detail"]


def test_bad_uploads_are_refused_and_store_nothing(streams, redis_server: Redis):
    headers = login(streams)
    r = httpx.post(streams.url + "/data/up", headers=headers, data={"entries": "not a file"})
    assert r.status_code == 400
    r = httpx.put(streams.url + "/streams/up", headers=headers, json={"max_len": -3})
    assert r.status_code == 400
    assert redis_server.client().exists("up", "XMETA:up") == 0


def test_per_stream_max_len_bounds_the_stream(streams, redis_server: Redis):
    headers = login(streams)
    assert httpx.put(streams.url + "/streams/short", headers=headers, json={"max_len": 10}).status_code == 200
    files = [("entries", (f"e{i}", b"x" * 10)) for i in range(400)]
    ids = httpx.post(streams.url + "/data/short", headers=headers, files=files).json()
    assert len(ids) == 400
    # trimming is approximate (MAXLEN ~), as PTG: whole nodes of at most 100 entries go
    assert redis_server.client().xlen("short") <= 110


async def _closed_with(url: str, headers: dict[str, str], frames: list[str | bytes], ack: bool) -> tuple[int, str, list[str]]:
    acks: list[str] = []
    async with websockets.connect(url, additional_headers=headers) as ws:
        for frame in frames:
            await ws.send(frame)
        try:
            while True:
                acks.append(await asyncio.wait_for(ws.recv(), 10))
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code, exc.rcvd.reason, acks
    raise AssertionError("not closed")


def test_malformed_push_messages_close_the_socket_after_storing_what_came_before(streams, redis_server: Redis):
    headers = login(streams)
    url = ws_url(streams, "/data/*/push?batch=True&ack=True")
    good = [json.dumps([["bf", 2], ["bf", 5]]), b"okyes"]
    code, reason, acks = asyncio.run(_closed_with(url, headers, [*good, json.dumps([["bf", 9]]), b"short"], True))
    assert code == 1007 and "blob holds 5 bytes" in reason
    assert len(acks) == 1 and len(acks[0].split(",")) == 2
    assert [f[b"d"] for _, f in redis_server.client().xrange("bf")] == [b"ok", b"yes"]
    code, reason, _ = asyncio.run(_closed_with(url, headers, ["{not json"], True))
    assert code == 1007 and "JSON" in reason
    code, reason, _ = asyncio.run(_closed_with(url, headers, [b"binary where the header goes"], True))
    assert code == 1003
    code, reason, _ = asyncio.run(_closed_with(ws_url(streams, "/data/*/push"), headers, [], False))
    assert code == 1008 and "batch" in reason
    code, reason, _ = asyncio.run(_closed_with(ws_url(streams, "/data/a+b/push?batch=true"), headers,
                                               [json.dumps([["c", 1]]), b"x"], False))
    assert code == 1007 and "not one of" in reason
    assert redis_server.client().exists("c") == 0


def test_metadata_keys_are_no_stream_ids(streams, redis_server: Redis):
    headers = login(streams)
    client = redis_server.client()
    for r in (httpx.post(streams.url + "/data/XMETA:cam2", headers=headers, files={"entries": ("f", b"x")}),
              httpx.get(streams.url + "/data/XMETA:cam2", headers=headers),
              httpx.put(streams.url + "/streams/XMETA:cam2", headers=headers, json={"fps": 30})):
        assert r.status_code == 400 and "reserved" in r.json()["detail"]
    code, reason, _ = asyncio.run(_closed_with(ws_url(streams, "/data/XMETA:cam2/push"), headers, [], False))
    assert code == 1008 and "reserved" in reason
    code, reason, _ = asyncio.run(_closed_with(ws_url(streams, "/data/*/push?batch=true"), headers,
                                               [json.dumps([["XMETA:cam2", 1]]), b"x"], False))
    assert code == 1007 and "reserved" in reason
    assert client.exists("XMETA:cam2") == 0
    # a stream of that name written to Redis directly is refused, not replaced, by cam3's metadata
    client.xadd("XMETA:cam3", {"d": b"frame"})
    for override in ("true", "false"):
        r = httpx.put(streams.url + "/streams/cam3", params={"override": override}, headers=headers,
                      json={"fps": 30})
        assert r.status_code == 400 and "WRONGTYPE" in r.json()["detail"]
    assert client.xlen("XMETA:cam3") == 1
    assert httpx.get(streams.url + "/streams/cam3", headers=headers).json()["meta"] is None


def test_delete_refuses_keys_that_are_not_streams_and_deletes_nothing(streams, redis_server: Redis):
    headers = login(streams)
    client = redis_server.client()
    client.set("del-text", "not a stream")
    client.hset("del-hash", "field", "value")
    client.xadd("del-cam", {"d": b"x"})
    client.xadd("del-cam2", {"d": b"x"})
    client.xadd("XMETA:del-cam2", {"d": b"x"})  # a stream at del-cam2's metadata key
    # del-cam comes before del-hash: nothing goes unless every key holds what it should
    for sid in ("del-text", "del-cam+del-hash", "del-cam2"):
        r = httpx.delete(streams.url + "/streams/" + sid, headers=headers)
        assert r.status_code == 400 and "WRONGTYPE" in r.json()["detail"], sid
    assert client.exists("del-text", "del-hash", "del-cam", "del-cam2", "XMETA:del-cam2") == 5
    assert httpx.put(streams.url + "/streams/del-cam", headers=headers, json={"fps": 30}).status_code == 200
    r = httpx.delete(streams.url + "/streams/del-cam+del-none", headers=headers)
    assert r.json() == [1, 1, 1, 0, 0, 0] and client.exists("del-cam", "XMETA:del-cam") == 0


def test_ids_and_timeouts_redis_cannot_use_are_refused(streams):
    headers = login(streams)
    posted = httpx.post(streams.url + "/data/wide", headers=headers, files={"entries": ("f", b"x")})
    assert posted.status_code == 201
    for value in ("99999999999999999999", "18446744073709551616", "1-18446744073709551616"):
        r = httpx.get(streams.url + "/data/wide", params={"last_entry_id": value}, headers=headers)
        assert r.status_code == 400 and "last_entry_id" in r.json()["detail"]
    top = "18446744073709551615-18446744073709551615"  # the largest id there is
    r = httpx.get(streams.url + "/data/wide", params={"last_entry_id": top}, headers=headers)
    assert r.status_code == 200 and r.content == b""
    for query, needle in (("last_entry_id=99999999999999999999", "last_entry_id"),
                          ("last_entry_id=99999999999999999999&latest=true", "last_entry_id"),
                          (f"last_entry_id={top}&latest=true", "invalid start ID"),  # nothing comes after it
                          ("last_entry_id=0&timeout=9223372036854775807", "timeout")):
        url = ws_url(streams, "/data/wide/pull?" + query)
        code, reason, _ = asyncio.run(_closed_with(url, headers, [], False))
        assert (code, needle in reason) == (1008, True), (query, reason)
    url = ws_url(streams, "/data/wide/push?batch=true")
    frames = [json.dumps([["wide", "99999999999999999999-0", 1]]), b"x"]
    code, reason, _ = asyncio.run(_closed_with(url, headers, frames, False))
    assert code == 1007 and "invalid entry id" in reason
    assert "Traceback" not in streams.output()


def test_keys_of_another_type_are_the_clients_error(streams, redis_server: Redis):
    headers = login(streams)
    redis_server.client().set("plain", "not a stream")
    for params in ({}, {"last_entry_id": "0"}):
        r = httpx.get(streams.url + "/data/plain", params=params, headers=headers)
        assert r.status_code == 400 and "WRONGTYPE" in r.json()["detail"]
    for path in ("pull", "pull?last_entry_id=0", "pull?last_entry_id=*", "push"):
        frames: list[str | bytes] = [b"x"] if path == "push" else []
        url = ws_url(streams, "/data/plain/" + path)
        code, reason, _ = asyncio.run(_closed_with(url, headers, frames, False))
        assert code == 1008 and "WRONGTYPE" in reason, path
    assert "Traceback" not in streams.output()


def test_a_redis_out_of_memory_is_try_later_and_loses_nothing(streams, redis_server: Redis):
    headers = login(streams)
    redis = redis_server.client()
    redis.config_set("maxmemory-policy", "noeviction")
    redis.config_set("maxmemory", "1")  # every write is refused: OOM
    try:
        r = httpx.post(streams.url + "/data/full", headers=headers, files=[("entries", ("e", b"x"))])
        assert r.status_code == 503 and "maxmemory" in r.json()["detail"]
        code, reason, _ = asyncio.run(_closed_with(ws_url(streams, "/data/full/push"), headers, [b"x"], True))
        assert code == 1013 and "cannot take" in reason
    finally:
        redis.config_set("maxmemory", "0")
    r = httpx.post(streams.url + "/data/full", headers=headers, files=[("entries", ("e", b"x"))])
    assert r.status_code == 201 and redis.xlen("full") == 1


def test_a_redis_user_without_the_rights_is_the_servers_fault(tmp_path, redis_server: Redis):
    # NOPERM comes from redis-py as a ResponseError whose message has lost its code
    redis_server.client().acl_setuser("reader", enabled=True, passwords=["+pw"], keys=["*"],
                                      commands=["+@all", "-xrevrange", "-xread"])
    url = redis_server.url.replace("redis://", "redis://reader:pw@", 1)
    server = start_streams(tmp_path / "home", url, "--streams-dev-login", "--streams-retry-s", "0.5")
    try:
        token = httpx.post(server.url + "/token", data={"username": "dev", "password": "dev"}).json()["access_token"]
        r = httpx.get(server.url + "/data/cam", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 503 and "no permissions" in r.json()["detail"]
    finally:
        server.stop()
        redis_server.client().acl_deluser("reader")


def test_a_streams_server_starts_while_redis_is_down(tmp_path):
    server = start_streams(tmp_path / "home", "redis://127.0.0.1:1", "--streams-retry-s", "0.2")
    try:
        assert httpx.get(server.url + "/-/health").status_code == 200
        assert "does not answer yet" in server.output()
    finally:
        server.stop()


def test_start_offsets_from_the_readme_are_understood(streams, redis_server: Redis):
    headers = login(streams)

    async def push() -> str:
        async with websockets.connect(ws_url(streams, "/data/*/push?batch=true&ack=true"), additional_headers=headers) as ws:
            await ws.send(json.dumps([["so0", 0], ["so2", 3], ["so0", 5]]))
            await ws.send(b"abcdefgh")
            return await ws.recv()

    assert len(asyncio.run(push()).split(",")) == 3
    client = redis_server.client()
    assert [f[b"d"] for _, f in client.xrange("so0")] == [b"abc", b"fgh"]
    assert [f[b"d"] for _, f in client.xrange("so2")] == [b"de"]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_consumer_that_does_not_read_does_not_make_the_server_buffer(streams):
    headers = login(streams)
    blob = b"\x07" * (1024 * 1024)

    async def run() -> tuple[float, float, int]:
        async with websockets.connect(ws_url(streams, "/data/big/pull?last_entry_id=0&count=4"),
                                      additional_headers=headers, max_queue=1, max_size=2**24) as slow:
            before = _rss_mb(streams.proc.pid)
            async with websockets.connect(ws_url(streams, "/data/big/push?ack=true"), additional_headers=headers) as ws:
                deadline = time.monotonic() + 60
                for _ in range(120):
                    await ws.send(blob)
                    await ws.recv()
                    assert time.monotonic() < deadline
            await asyncio.sleep(0.5)
            after = _rss_mb(streams.proc.pid)
            received = 0
            with pytest.raises(asyncio.TimeoutError):
                while True:  # the slow consumer still gets its entries, in order
                    await asyncio.wait_for(slow.recv(), 2)
                    received += 1
            return before, after, received

    before, after, received = asyncio.run(run())
    assert after - before < 80, (before, after)  # 120 MB went by; the server kept a few batches at most
    assert received >= 2 * 30  # header and blob per batch of 4: all 120 entries


def test_redis_down_past_the_retry_window_is_a_clear_error(tmp_path):
    redis = Redis(tmp_path / "valkey")
    server = start_streams(tmp_path / "home", redis.url, "--streams-dev-login", "--streams-retry-s", "0.5")
    try:
        token = httpx.post(server.url + "/token", data={"username": "dev", "password": "dev"}).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}

        async def push_one() -> tuple[int, str]:
            async with websockets.connect(ws_url(server, "/data/cam/push?ack=true"), additional_headers=headers) as ws:
                await ws.send(b"frame")
                try:
                    return 0, await ws.recv()
                except websockets.ConnectionClosed as exc:
                    return exc.rcvd.code, exc.rcvd.reason

        assert asyncio.run(push_one())[0] == 0
        redis.stop()
        r = httpx.get(server.url + "/data/cam", headers=headers)
        assert r.status_code == 503 and r.json() == {"detail": "data store unavailable; try again"}
        assert "Retry-After" in r.headers
        assert asyncio.run(push_one()) == (1013, "data store unavailable; try again")
        assert "Traceback" not in server.output()
        redis.start()
        assert asyncio.run(push_one())[0] == 0  # reconnects by itself once Redis is back
        assert httpx.get(server.url + "/data/cam", params={"count": 5}, headers=headers).content == b"frame" * 2
    finally:
        server.stop()
        if redis.server.is_running():
            redis.stop()
