"""The data store: Redis streams behind the few operations PTG needs.

Entries are `XADD <stream> MAXLEN ~ <n> <id> d <bytes>`; a stream's metadata is JSON at
`XMETA:<stream>`, as PTG keeps them, so tools that read PTG's Redis directly still work.
A lost connection is retried for `retry_s` seconds (a Redis restart), then the caller gets
`StoreUnavailable`. Retried writes are at-least-once: a write whose reply was lost may land
twice, never zero times once acknowledged. A command Redis refuses (a key of another type,
an id it cannot use) is the client's `BadRequest`, with Redis's message.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import kernel
from kernel_streams.framing import META_PREFIX

log = logging.getLogger("kernel.streams")
T = TypeVar("T")
#: How long a stream's `max_len` meta is trusted before it is read again.
_META_FRESH_S = 5.0

Entry = tuple[str, str, bytes]


class StoreUnavailable(kernel.Unavailable):
    """Redis did not answer within the retry window."""


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


#: Error codes of a Redis that cannot take a command now, whatever the command (out of
#: memory, a read-only or cut-off replica, a failing disk, a busy script) or that this
#: server's user may not run (NOPERM, an ACL to fix): not the client's fault.
_SERVER_STATES = frozenset({"OOM", "READONLY", "MISCONF", "MASTERDOWN", "NOREPLICAS", "BUSY", "TRYAGAIN",
                            "CLUSTERDOWN", "LOADING", "NOPERM"})


def _refusal(what: str, exc: Exception) -> kernel.KernelError:
    """A command Redis refused: the client's `BadRequest` (a key of another type, an id it
    cannot use), or `StoreUnavailable` when Redis itself is in no state to serve."""
    # redis-py strips the codes it knows from the message and keeps them as `status_code`.
    code = getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0]
    if code in _SERVER_STATES:
        log.error("the data store refused %s: %s", what, exc)
        return StoreUnavailable(f"the data store cannot take {what} now: {exc}")
    return kernel.BadRequest(f"the data store refused {what}: {exc}")


def _meta_key(sid: str) -> str:
    return META_PREFIX + sid


def _raise_refusal(results: list[Any]) -> list[Any]:
    """A pipeline's results, or its first refusal raised as redis-py's pipeline would,
    without the command text redis-py prefixes to the message."""
    failed = next((r for r in results if isinstance(r, Exception)), None)
    if failed is not None:
        raise failed
    return results


def _iso(entry_id: str) -> str:
    return datetime.datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000).isoformat(sep=" ")


#: Deletes streams (KEYS: stream, metadata key, ...) only when every key holds its type or nothing.
_DELETE = """
for i = 1, #KEYS, 2 do
  local kind = redis.call('TYPE', KEYS[i]).ok
  local meta = redis.call('TYPE', KEYS[i + 1]).ok
  if kind ~= 'stream' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. kind .. ', not a stream: nothing deleted')
  end
  if meta ~= 'string' and meta ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i + 1] .. ' holds a ' .. meta .. ', not metadata: nothing deleted')
  end
end
local out = {}
for i = 1, #KEYS, 2 do
  table.insert(out, redis.call('DEL', KEYS[i + 1]))
  table.insert(out, redis.call('XTRIM', KEYS[i], 'MAXLEN', 0))
  table.insert(out, redis.call('DEL', KEYS[i]))
end
return out
"""


class StreamStore:
    def __init__(self, url: str, *, max_len: int, retry_s: float, connections: int) -> None:
        import redis.asyncio as aioredis
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import ResponseError
        from redis.exceptions import TimeoutError as RedisTimeout
        from redis.retry import Retry

        self._lost = (RedisConnectionError, RedisTimeout, OSError)
        self._refused = ResponseError
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=connections, timeout=max(retry_s, 1.0), protocol=2,
            retry=Retry(NoBackoff(), 0), socket_connect_timeout=max(retry_s, 1.0),
        )
        self.redis = aioredis.Redis(connection_pool=pool)
        self.url = url
        self.max_len = max_len
        self.retry_s = retry_s
        self._max_lens: dict[str, tuple[float, int]] = {}
        #: The largest entry of each stream's last read: how many entries a next read may ask for.
        self.entry_sizes: dict[str, int] = {}
        self._delete_script = self.redis.register_script(_DELETE)

    async def close(self) -> None:
        await self.redis.aclose()

    async def _run(self, op: Callable[[], Awaitable[T]]) -> T:
        """`op()`, retried while Redis is unreachable, for at most `retry_s` seconds; a command
        Redis refuses is the client's error."""
        deadline = time.monotonic() + self.retry_s
        pause = 0.05
        while True:
            try:
                return await op()
            except self._refused as exc:
                raise _refusal("the request", exc) from None
            except self._lost as exc:
                if time.monotonic() + pause > deadline:
                    log.error("data store unreachable: %s", type(exc).__name__)
                    raise StoreUnavailable("data store unavailable; try again") from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)

    async def ping(self) -> bool:
        return bool(await self._run(self.redis.ping))

    # -- entries ---------------------------------------------------------------------------

    async def _stream_max_len(self, sid: str) -> int:
        now = time.monotonic()
        cached = self._max_lens.get(sid)
        if cached and cached[0] > now:
            return cached[1]
        meta = _meta_dict(await self.redis.get(_meta_key(sid)))
        value = meta.get("max_len") if meta else None
        n = value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else self.max_len
        self._max_lens[sid] = (now + _META_FRESH_S, n)
        return n

    async def add(self, entries: Sequence[tuple[str, str, Any]]) -> list[str]:
        """Append entries (stream, XADD id, data); their new ids, in order.

        One pipelined write of XADDs (packed by the connection, large entries passed as
        memoryviews without a copy), the replies read back one by one; without MULTI/EXEC:
        a transaction would not undo an entry Redis refuses either, and only spares a retry
        after a lost connection re-adding the entries that had landed, which at-least-once
        allows; it cost a reply per entry more.
        """

        async def op() -> list[Any]:
            limits = {sid: await self._stream_max_len(sid) for sid in {e[0] for e in entries}}
            pool = self.redis.connection_pool
            conn = await pool.get_connection()
            try:
                await conn.send_packed_command(conn.pack_commands(
                    ("XADD", sid, "MAXLEN", "~", limits[sid], entry_id, "d", data)
                    for sid, entry_id, data in entries
                ))
                results: list[Any] = []
                for _ in entries:
                    try:
                        results.append(await conn.read_response())
                    except self._refused as exc:
                        results.append(exc)
            except BaseException:
                # replies may still be on their way: the connection is out of step, drop it
                await conn.disconnect()
                raise
            finally:
                await pool.release(conn)
            return results

        results = await self._run(op)
        failed = next((r for r in results if isinstance(r, Exception)), None)
        if failed is not None:
            raise _refusal("an entry", failed)
        return [_text(r) for r in results]

    async def latest(self, sids: Sequence[str], count: int, after: dict[str, str] | None = None) -> list[Entry]:
        """The newest `count` entries of each stream (newer than `after[sid]` when given), oldest first."""

        async def op() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for sid in sids:
                    low = f"({after[sid]}" if after and after.get(sid) else "-"
                    pipe.xrevrange(sid, "+", low, count=count)
                return _raise_refusal(await pipe.execute(raise_on_error=False))

        results = await self._run(op)
        return [(sid, _text(i), f.get(b"d", b"")) for sid, rows in zip(sids, results)
                for i, f in reversed(rows)]

    async def read(self, after: dict[str, str], count: int, block_ms: int | None = None) -> list[Entry]:
        """Entries after `after[sid]` per stream (XREAD), waiting up to `block_ms` for one."""
        rows = await self._run(lambda: self.redis.xread(after, count=count, block=block_ms))
        return [(_text(sid), _text(i), f.get(b"d", b"")) for sid, entries in rows or [] for i, f in entries]

    async def last_ids(self, sids: Sequence[str]) -> dict[str, str]:
        """Each stream's newest entry id (`0-0` for an empty or missing stream)."""

        async def op() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for sid in sids:
                    pipe.xrevrange(sid, "+", "-", count=1)
                return _raise_refusal(await pipe.execute(raise_on_error=False))

        results = await self._run(op)
        return {sid: _text(rows[0][0]) if rows else "0-0" for sid, rows in zip(sids, results)}

    # -- streams ---------------------------------------------------------------------------

    async def list_streams(self) -> list[str]:
        async def op() -> list[str]:
            return sorted([_text(k) async for k in self.redis.scan_iter(_type="stream", count=1000)])

        return await self._run(op)

    async def info(self, sids: Iterable[str]) -> list[dict[str, Any]]:
        """PTG's stream info: XINFO STREAM fields, first/last entry ids and times, and meta."""
        from redis.exceptions import ResponseError

        sids = list(sids)

        async def op() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for sid in sids:
                    pipe.get(_meta_key(sid))
                    pipe.xinfo_stream(sid)
                return await pipe.execute(raise_on_error=False)

        results = await self._run(op)
        out = []
        for sid, meta, info in zip(sids, results[::2], results[1::2]):
            entry: dict[str, Any] = {"sid": sid}
            if isinstance(info, ResponseError):
                entry["error"] = str(info)
            elif isinstance(info, Exception):
                raise StoreUnavailable("data store unavailable; try again")
            else:
                entry.update({str(k): _info_value(v) for k, v in info.items()})
                for key in ("first-entry", "last-entry"):
                    if entry.get(key):
                        entry[key] = entry[key][0]
                        entry[f"{key}-time"] = _iso(entry[key])
            if isinstance(meta, Exception):  # its metadata key holds another type
                entry.setdefault("error", str(meta))
                meta = None
            entry["meta"] = _text(meta)
            out.append(entry)
        return out

    async def get_meta(self, sid: str) -> str | None:
        return _text(await self._run(lambda: self.redis.get(_meta_key(sid))))

    async def set_meta(self, sid: str, meta: dict[str, Any], *, update: bool) -> str | None:
        """Store `meta` (merged into the old meta when `update`); the stored JSON text."""
        key = _meta_key(sid)

        async def op() -> Any:
            if update:
                previous = _meta_dict(await self.redis.get(key))
                merged = {**(previous or {}), **meta}
            else:
                merged = meta
            # GET makes Redis refuse (WRONGTYPE) to replace a key that is not metadata
            await self.redis.set(key, json.dumps(merged), get=True)
            return await self.redis.get(key)

        stored = await self._run(op)
        self._max_lens.pop(sid, None)
        return _text(stored)

    async def delete(self, sids: Sequence[str]) -> list[int]:
        """Delete streams and their meta; PTG's answer: (meta deleted, entries trimmed, stream deleted) each.

        A key of another type (a shared Redis's string or hash, a stream at a metadata key)
        is refused with WRONGTYPE and nothing is deleted: a Lua script, as MULTI cannot make
        its deletes depend on the TYPE replies of the same transaction.
        """
        keys = [key for sid in sids for key in (sid, _meta_key(sid))]
        result = await self._run(lambda: self._delete_script(keys=keys))
        for sid in sids:
            self._max_lens.pop(sid, None)
            self.entry_sizes.pop(sid, None)
        return result


def _meta_dict(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _info_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_info_value(v) for v in value]
    if isinstance(value, dict):
        return {_text(k): _info_value(v) for k, v in value.items()}
    return _text(value)
