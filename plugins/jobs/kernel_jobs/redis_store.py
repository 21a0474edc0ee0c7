"""Jobs kept in Redis, so several kernel processes serve one set of queues and a
restarted process loses nothing.

Keys under the prefix P: `P:job:<id>` the job as JSON; `P:q:<type>` ids waiting, head
first; `P:run:<type>` ids taken by a worker; `P:done:<id>` a wake-up for the client
waiting on that job; `P:workers:<type>` and `P:mean` for estimates; `P:disabled` the
disabled endpoints; `P:active:<endpoint>:<owner>` a client's queued or processing jobs,
for `client_request_limit`. A worker's take moves
the id from the queue to the run list in one command (BLMOVE), so a process that dies
right after still leaves it where the sweep finds and requeues it. Every change of state
is one Lua script, so two processes never both finish, claim or requeue a job. Nested
values (job data, progress, result) travel as JSON strings inside the job, because Lua's
JSON codec cannot tell an empty list from an empty object. A Redis that cannot be reached
is `kernel.Unavailable` (503) to whoever asked, never an internal error, and is logged once
when the outage starts and once when it ends. A Redis with a `maxmemory` takes new jobs
only below SUBMIT_MEMORY_SHARE of it, so workers can still take and finish queued ones; one
that refuses a write all the same (it is full) is a 503 too, logged once a minute at most.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError

import kernel
from kernel_jobs.store import STORE_FULL, Job, Store, next_mean

log = logging.getLogger("kernel.jobs")
C = TypeVar("C", bound=type)

NESTED = ("data", "progress", "result")


def dump(job: Job) -> str:
    return json.dumps({k: json.dumps(v) if k in NESTED else v for k, v in job.items()})


def load(raw: bytes | str) -> Job:
    job = json.loads(raw)
    for key in NESTED:
        if isinstance(job.get(key), str):
            job[key] = json.loads(job[key])
    return job

#: Longest single blocking Redis call, so a worker that hangs up is noticed quickly.
SLICE = 1.0
#: Longest wait for Redis to connect or answer (a blocking call waits SLICE more): past it,
#: a Redis that drops packets is unreachable, rather than every request hanging on it.
TIMEOUT = 5.0
#: Share of Redis's maxmemory past which submits are refused (the rest is the workers').
SUBMIT_MEMORY_SHARE = 0.9

# KEYS: job, queue, disabled set, the client's active set.
# ARGV: job JSON, id, max queue, endpoint, client limit, job key prefix.
SUBMIT = """
if redis.call('SISMEMBER', KEYS[3], ARGV[4]) == 1 then return 'disabled' end
local limit = tonumber(ARGV[5])
if limit > 0 and redis.call('SCARD', KEYS[4]) >= limit then
  -- finish and lapse remove ids; this also drops any whose job vanished another way
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    local raw = redis.call('GET', ARGV[6] .. id)
    local state = raw and cjson.decode(raw).state
    if state ~= 'queued' and state ~= 'processing' then redis.call('SREM', KEYS[4], id) end
  end
  if redis.call('SCARD', KEYS[4]) >= limit then return 'client limit' end
end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[3]) then return 'queue full' end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[2])
if limit > 0 then redis.call('SADD', KEYS[4], ARGV[2]) end
return 'ok'
"""

#: Lua: the key of a job's owner's active set (see SUBMIT).
ACTIVE_KEY = """
local function active_key(prefix, job) return prefix .. ':active:' .. job.endpoint .. ':' .. job.owner end
"""

START = """
local raw = redis.call('GET', KEYS[1])
if not raw then redis.call('LREM', KEYS[2], 0, ARGV[1]) return nil end
local job = cjson.decode(raw)
if job.state ~= 'queued' then redis.call('LREM', KEYS[2], 0, ARGV[1]) return nil end
job.state = 'processing'
job.worker = ARGV[2]
job.start_time_compute = tonumber(ARGV[3])
job.last_update = tonumber(ARGV[3])
job.stuck_since = nil
raw = cjson.encode(job)
redis.call('SET', KEYS[1], raw)
return raw
"""

# ARGV: id, now.
REQUEUE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local job = cjson.decode(raw)
if job.state ~= 'processing' then return 0 end
job.state = 'queued'
job.worker = nil
job.start_time_compute = nil
job.queued_since = tonumber(ARGV[2])
redis.call('SET', KEYS[1], cjson.encode(job))
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('LPUSH', KEYS[3], ARGV[1])
return 1
"""

PROGRESS = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local job = cjson.decode(raw)
if job.state ~= 'processing' then return 0 end
job.progress = ARGV[1]
job.last_update = tonumber(ARGV[2])
redis.call('SET', KEYS[1], cjson.encode(job))
return 1
"""

# ARGV[4]: the key prefix.
FINISH = ACTIVE_KEY + """
local raw = redis.call('GET', KEYS[1])
if not raw then return nil end
local job = cjson.decode(raw)
if job.state ~= 'queued' and job.state ~= 'processing' then return nil end
job.state = 'done'
job.result = ARGV[2]
job.result_received_time = tonumber(ARGV[3])
raw = cjson.encode(job)
local ttl = math.ceil(job.result_lifetime)
redis.call('SET', KEYS[1], raw, 'EX', ttl)
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('LREM', KEYS[3], 0, ARGV[1])
redis.call('RPUSH', KEYS[4], '1')
redis.call('EXPIRE', KEYS[4], ttl)
redis.call('SREM', active_key(ARGV[4], job), ARGV[1])
return raw
"""

CLAIM = """
local raw = redis.call('GET', KEYS[1])
if not raw then return nil end
if cjson.decode(raw).state ~= 'done' then return nil end
redis.call('DEL', KEYS[1], KEYS[2])
return raw
"""

SWEEP = ACTIVE_KEY + """
local now = tonumber(ARGV[1])
local prefix = ARGV[2]
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  local key = prefix .. ':job:' .. id
  local raw = redis.call('GET', key)
  if not raw then
    redis.call('LREM', KEYS[2], 0, id)
  else
    local job = cjson.decode(raw)
    local requeue = false
    if job.state == 'processing' then
      requeue = now - job.last_update > job.inactivity_timeout
    elseif job.state == 'queued' then
      -- taken from the queue by a process that died before it marked the job processing
      if job.stuck_since == nil then
        job.stuck_since = now
        redis.call('SET', key, cjson.encode(job))
      else
        requeue = now - job.stuck_since > job.inactivity_timeout
      end
    else
      redis.call('LREM', KEYS[2], 0, id)
    end
    if requeue then
      job.state = 'queued'
      job.worker = nil
      job.start_time_compute = nil
      job.stuck_since = nil
      job.queued_since = now
      redis.call('SET', key, cjson.encode(job))
      redis.call('LREM', KEYS[2], 0, id)
      redis.call('LPUSH', KEYS[1], id)
    end
  end
end
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local key = prefix .. ':job:' .. id
  local raw = redis.call('GET', key)
  if not raw then
    redis.call('LREM', KEYS[1], 0, id)
  else
    local job = cjson.decode(raw)
    -- jobs queued before `queued_since` was kept count from their submission
    if job.state == 'queued' and now - (job.queued_since or job.start_time) > job.max_time_in_queue then
      job.state = 'lapsed'
      redis.call('SET', key, cjson.encode(job), 'EX', math.ceil(job.result_lifetime))
      redis.call('LREM', KEYS[1], 0, id)
      redis.call('RPUSH', prefix .. ':done:' .. id, '1')
      redis.call('EXPIRE', prefix .. ':done:' .. id, math.ceil(job.result_lifetime))
      redis.call('SREM', active_key(prefix, job), id)
    end
  end
end
return 0
"""


def _unavailable(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def call(self: RedisStore, *args: Any, **kwargs: Any) -> Any:
        try:
            answer = await method(self, *args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._lost(exc)  # the client is told no more than that
            raise kernel.Unavailable("the job store (Redis) cannot be reached; try again") from None
        except OutOfMemoryError:
            # Redis at its maxmemory refuses writes. Logged once a minute at most.
            if time.monotonic() - self.full_logged > 60:
                self.full_logged = time.monotonic()
                log.warning("jobs: Redis is full (maxmemory) and refuses writes; answering 503")
            raise kernel.Unavailable("the job store (Redis) is full; try again later") from None
        self._reached()
        return answer

    return call


def _store_errors(cls: C) -> C:
    """Wrap each operation of the `Store` interface with `_unavailable` (not `start`: a
    Redis missing at startup stops the server with its own message)."""
    for name in Store.__abstractmethods__:
        setattr(cls, name, _unavailable(vars(cls)[name]))
    return cls


@_store_errors
class RedisStore(Store):
    def __init__(self, url: str, prefix: str, job_types: list[str]) -> None:
        self.url = url
        self.p = prefix
        self.job_types = job_types
        self.redis: Any = None
        #: When Redis was first found unreachable; None while it answers.
        self.down_since: float | None = None
        #: When a refusal for want of memory was last logged.
        self.full_logged = -math.inf

    async def start(self) -> None:
        # RESP2: with RESP3, redis-py (8.x) skips its check for connections Redis closed
        # (a restart) and sends the next command down the dead one
        self.redis = aioredis.Redis.from_url(self.url, protocol=2, socket_connect_timeout=TIMEOUT,
                                             socket_timeout=TIMEOUT + SLICE)
        await self.redis.ping()
        self._submit = self.redis.register_script(SUBMIT)
        self._start = self.redis.register_script(START)
        self._requeue = self.redis.register_script(REQUEUE)
        self._progress = self.redis.register_script(PROGRESS)
        self._finish = self.redis.register_script(FINISH)
        self._claim = self.redis.register_script(CLAIM)
        self._sweep = self.redis.register_script(SWEEP)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    # An outage is logged when it starts and when it ends, not on every failed call: the
    # sweep, the kernel's own workers and every worker poll would repeat it each second.
    def _lost(self, exc: Exception) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.error("jobs: Redis cannot be reached (%s); answering 503 until it is back", exc)

    def _reached(self) -> None:
        if self.down_since is not None:
            log.info("jobs: Redis is reachable again after %.0f s", time.monotonic() - self.down_since)
            self.down_since = None

    async def ping(self) -> None:
        await self.redis.ping()

    def _job(self, job_id: str) -> str:
        return f"{self.p}:job:{job_id}"

    def _q(self, job_type: str) -> str:
        return f"{self.p}:q:{job_type}"

    def _run(self, job_type: str) -> str:
        return f"{self.p}:run:{job_type}"

    async def _type_of(self, job_id: str) -> str | None:
        job = await self.job(job_id)
        return job["job_type"] if job else None

    async def submit(self, job: Job, max_queue: int, client_limit: int) -> str | None:
        # A Redis at its maxmemory refuses every write, a worker's take and result too: new
        # jobs stop short of it, so the queued ones can still run and their results be kept.
        memory = await self.redis.info("memory")
        if memory.get("maxmemory") and memory["used_memory"] >= SUBMIT_MEMORY_SHARE * memory["maxmemory"]:
            return STORE_FULL
        job["state"] = "queued"
        keys = [self._job(job["id"]), self._q(job["job_type"]), f"{self.p}:disabled",
                f"{self.p}:active:{job['endpoint']}:{job['owner']}"]
        answer = await self._submit(keys=keys, args=[dump(job), job["id"], max_queue, job["endpoint"],
                                                     client_limit, f"{self.p}:job:"])
        answer = answer.decode()
        return None if answer == "ok" else answer

    async def set_enabled(self, endpoint: str, enabled: bool) -> None:
        key = f"{self.p}:disabled"
        await (self.redis.srem(key, endpoint) if enabled else self.redis.sadd(key, endpoint))

    async def enabled(self, endpoint: str) -> bool:
        return not await self.redis.sismember(f"{self.p}:disabled", endpoint)

    async def take(self, job_type: str, worker: str, timeout: float, gone: asyncio.Event) -> Job | None:
        if timeout <= 0:  # filling a batch: only what is already waiting
            raw_id = await self.redis.lmove(self._q(job_type), self._run(job_type), "LEFT", "RIGHT")
            return await self._begin(job_type, raw_id, worker) if raw_id is not None else None
        deadline = time.monotonic() + timeout
        while not gone.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            # BLMOVE rounds its timeout to what the server supports; keep slices short.
            raw_id = await self.redis.blmove(self._q(job_type), self._run(job_type),
                                             max(0.01, min(SLICE, left)), "LEFT", "RIGHT")
            if raw_id is None:
                continue
            job = await self._begin(job_type, raw_id, worker)
            if job is None:
                continue
            if gone.is_set():
                await self.requeue(job["id"])
                return None
            return job
        return None

    async def _begin(self, job_type: str, raw_id: bytes, worker: str) -> Job | None:
        job_id = raw_id.decode()
        raw = await self._start(keys=[self._job(job_id), self._run(job_type)], args=[job_id, worker, time.time()])
        return load(raw) if raw else None

    async def requeue(self, job_id: str) -> None:
        job_type = await self._type_of(job_id)
        if job_type is not None:
            await self._requeue(keys=[self._job(job_id), self._run(job_type), self._q(job_type)],
                                args=[job_id, time.time()])

    async def progress(self, job_id: str, progress: Any, data: Any) -> bool:
        payload = json.dumps({"progress": progress, "progress_data": data})
        return bool(await self._progress(keys=[self._job(job_id)], args=[payload, time.time()]))

    async def finish(self, job_id: str, result: dict[str, Any]) -> Job | None:
        job_type = await self._type_of(job_id)
        if job_type is None:
            return None
        keys = [self._job(job_id), self._run(job_type), self._q(job_type), f"{self.p}:done:{job_id}"]
        raw = await self._finish(keys=keys, args=[job_id, json.dumps(result), time.time(), self.p])
        return load(raw) if raw else None

    async def job(self, job_id: str) -> Job | None:
        raw = await self.redis.get(self._job(job_id))
        return load(raw) if raw else None

    async def claim(self, job_id: str) -> Job | None:
        raw = await self._claim(keys=[self._job(job_id), f"{self.p}:done:{job_id}"])
        return load(raw) if raw else None

    async def wait_done(self, job_id: str, timeout: float) -> None:
        # Leave the wake-up in place: another process's waiter or poller may need it too.
        key = f"{self.p}:done:{job_id}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.redis.exists(key):
                return
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    async def position(self, job: Job) -> int:
        if job["state"] != "queued":
            return 0
        index = await self.redis.lpos(self._q(job["job_type"]), job["id"])
        return int(index or 0)

    async def sweep(self, now: float) -> None:
        for job_type in self.job_types:
            await self._sweep(keys=[self._q(job_type), self._run(job_type)], args=[now, self.p])

    async def seen_worker(self, job_type: str, name: str, info: dict[str, Any]) -> None:
        await self.redis.hset(f"{self.p}:workers:{job_type}", name, json.dumps(info))

    async def workers(self, job_type: str) -> dict[str, dict[str, Any]]:
        raw = await self.redis.hgetall(f"{self.p}:workers:{job_type}")
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    async def record_duration(self, job_type: str, seconds: float) -> None:
        old = await self.mean_duration(job_type)
        await self.redis.hset(f"{self.p}:mean", job_type, next_mean(old, seconds))

    async def mean_duration(self, job_type: str) -> float | None:
        raw = await self.redis.hget(f"{self.p}:mean", job_type)
        return float(raw) if raw else None
