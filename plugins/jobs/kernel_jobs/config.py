"""The `[jobs]` config section and its command-line options."""

from __future__ import annotations

from typing import Annotated

import msgspec

import kernel

Seconds = Annotated[float, msgspec.Meta(gt=0)]


class JobsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Settings of the jobs plugin; an endpoint file's own values win over the defaults here."""

    #: Folders searched recursively for `aime_api_endpoint.cfg` files (and single files).
    endpoints: list[str] = []
    #: `redis://host:port/db`: keep queues, progress and results in Redis; None keeps them in memory.
    redis: str | None = None
    #: Prefix of every Redis key, so several deployments can share one Redis.
    redis_prefix: str = "kernel:jobs"
    #: Longest a worker's job request waits for a job; also capped at an endpoint's
    #: `[WORKER] request_timeout` and at 90% of the `request_timeout` the worker sends
    #: (its HTTP timeout), so the answer always beats that timeout.
    job_request_timeout: Seconds = 50.0
    #: A processing job without progress or result for this long is put back in the queue.
    job_inactivity_timeout: Seconds = 60.0
    #: A job waiting in the queue longer than this lapses.
    max_time_in_queue: Seconds = 3600.0
    #: A finished result not fetched by its client within this time is dropped.
    result_lifetime: Seconds = 600.0
    #: A worker not heard from for this long counts as offline in estimates.
    worker_offline_after: Seconds = 120.0
    #: Lifetime of the client session key a login hands out (a kernel token).
    session_ttl: Seconds = 86400.0
    #: How often timeouts are checked.
    sweep_interval: Seconds = 1.0
    #: Queue length per endpoint when its file sets no `max_queue_length`.
    max_queue_length: Annotated[int, msgspec.Meta(ge=1)] = 1000
    #: Jobs one client may have queued or processing per endpoint without its own
    #: `client_request_limit`; 0: no limit.
    client_request_limit: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: Bytes of queued jobs and kept results (as JSON) the in-memory store holds at most;
    #: past it a submit is answered 503. With `redis`, Redis's own `maxmemory` bounds them.
    max_bytes: kernel.ByteSize = 1 << 30


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def add_options(group: kernel.OptionGroup) -> None:
    group.add_option("--jobs-endpoints", "--endpoints", type=_csv, metavar="DIR,...",
                     help="folders holding aime_api_endpoint.cfg files (searched recursively)")
    group.add_option("--jobs-redis", metavar="URL",
                     help="keep queues and results in Redis (redis://host:port/db) so several servers share them")
    group.add_option("--jobs-redis-prefix", help="prefix of the Redis keys (default: kernel:jobs)")
    group.add_option("--jobs-job-request-timeout", type=float, metavar="SECONDS",
                     help="longest a worker's job request waits (default: 50)")
    group.add_option("--jobs-job-inactivity-timeout", type=float, metavar="SECONDS",
                     help="silence after which a processing job is requeued (default: 60)")
    group.add_option("--jobs-max-time-in-queue", type=float, metavar="SECONDS",
                     help="time after which a queued job lapses (default: 3600)")
    group.add_option("--jobs-result-lifetime", type=float, metavar="SECONDS",
                     help="time a result waits for its client (default: 600)")
    group.add_option("--jobs-worker-offline-after", type=float, metavar="SECONDS",
                     help="silence after which a worker counts as offline (default: 120)")
    group.add_option("--jobs-session-ttl", type=float, metavar="SECONDS",
                     help="lifetime of a client session key from login (default: 86400)")
    group.add_option("--jobs-sweep-interval", type=float, metavar="SECONDS",
                     help="how often timeouts are checked (default: 1)")
    group.add_option("--jobs-max-queue-length", type=int, metavar="N",
                     help="queue length per endpoint without its own max_queue_length (default: 1000)")
    group.add_option("--jobs-client-request-limit", type=int, metavar="N",
                     help="jobs one client may have queued or processing per endpoint without its own "
                          "client_request_limit (default: 0, no limit)")
    group.add_option("--jobs-max-bytes", type=kernel.byte_size, metavar="SIZE",
                     help="jobs and results the in-memory store holds at most, as JSON; past it a submit "
                          "gets 503 (default: 1G)")
