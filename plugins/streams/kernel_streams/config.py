"""The `[streams]` config section and the options that set it."""

from __future__ import annotations

from typing import Annotated

import msgspec

import kernel

Positive = Annotated[int, msgspec.Meta(ge=1)]


class StreamsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: redis:// URL of the data store; None starts an embedded Valkey server.
    redis: str | None = None
    #: File of user names and password hashes that `/token` accepts.
    users: str | None = None
    #: PTG's development rule: any user whose password equals the user name.
    dev_login: bool = False
    #: Lifetime of the tokens `/token` issues, in seconds (PTG: 30 days).
    token_ttl: Positive = 30 * 24 * 3600
    #: Entries kept per stream (approximate trim, as PTG); a stream's `max_len` meta overrides it.
    max_len: Positive = 1000
    #: Largest `count` a read may ask for.
    max_count: Positive = 1000
    #: Bytes of entries one GET response or pull message carries at most (one entry always);
    #: 16 MiB, the largest WebSocket message ptgctl (websockets' default) and uvicorn take.
    max_bytes: kernel.ByteSize = 1 << 24
    #: How long a pull waits for its client to take a whole message before closing the socket, in
    #: seconds: long enough for a slow link to take a full `max_bytes` message.
    send_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    #: How long one blocking read of a WebSocket pull waits in Redis, in milliseconds (PTG: 3000).
    block_ms: Positive = 3000
    #: How long a Redis connection error is retried before clients get an error, in seconds.
    retry_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    #: Redis connections at most (each blocking pull holds one while it waits).
    connections: Positive = 256
    #: Push messages received but not yet written to Redis, per socket.
    push_queue: Positive = 64
    #: Threads that check `/token` passwords (scrypt), apart from the thread pool plugins share.
    login_threads: Positive = 2
    #: Password checks that may wait for a login thread; past them `/token` answers 503.
    login_queue: Annotated[int, msgspec.Meta(ge=0)] = 32


def add_options(group: kernel.OptionGroup) -> None:
    group.add_option("--streams-redis", help="redis:// URL of the data store (default: start an embedded Valkey)")
    group.add_option("--streams-users", help="file of `user:scrypt$...` lines that /token accepts")
    group.add_option("--streams-dev-login", action="store_true",
                     help="development only: accept any user whose password equals the name")
    group.add_option("--streams-token-ttl", type=int, help="seconds a /token token lives (default 30 days)")
    group.add_option("--streams-max-len", type=int, help="entries kept per stream (default 1000)")
    group.add_option("--streams-max-count", type=int, help="largest count a read may ask for (default 1000)")
    group.add_option("--streams-max-bytes", type=kernel.byte_size, metavar="SIZE",
                     help="bytes of entries one GET response or pull message carries at most (default 16M)")
    group.add_option("--streams-send-timeout-s", type=float,
                     help="seconds a pull waits for its client to take a whole message before closing (default 300)")
    group.add_option("--streams-block-ms", type=int, help="milliseconds one blocking pull read waits (default 3000)")
    group.add_option("--streams-retry-s", type=float,
                     help="seconds to retry a lost Redis connection before failing (default 5)")
    group.add_option("--streams-connections", type=int, help="Redis connections at most (default 256)")
    group.add_option("--streams-push-queue", type=int,
                     help="push messages buffered per socket before reading stops (default 64)")
    group.add_option("--streams-login-threads", type=int, help="threads that check /token passwords (default 2)")
    group.add_option("--streams-login-queue", type=int,
                     help="password checks waiting for a thread before /token answers 503 (default 32)")
