"""The `zoo` plugin's hooks: options, config, routes, credentials, model source, startup."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from weakref import WeakKeyDictionary

from litestar.connection import ASGIConnection

import kernel
from kernel_zoo import auth, config
from kernel_zoo.config import ZooConfig
from kernel_zoo.source import ZooSource
from kernel_zoo.tokens import TokenStore
from kernel_zoo.tree import ZooTree

log = logging.getLogger("kernel.zoo")


class Zoo:
    """Everything one kernel's zoo keeps: config, the tree on disk, the tokens."""

    def __init__(self, k: kernel.Kernel) -> None:
        self.config: ZooConfig = k.config.section("zoo")
        self.tree = ZooTree(self.config.dir)
        self.store = TokenStore(self.tree.root)
        cache = Path(os.path.expanduser(k.config.kernel.state_dir)) / "zoo-models"
        self.source = ZooSource(self.tree, cache)


_zoos: WeakKeyDictionary[kernel.Kernel, Zoo] = WeakKeyDictionary()


def zoo_of(k: kernel.Kernel) -> Zoo:
    zoo = _zoos.get(k)
    if zoo is None:
        zoo = _zoos[k] = Zoo(k)
    return zoo


@kernel.hookimpl
def kernel_add_options(group: kernel.OptionGroup) -> None:
    config.add_options(group)


@kernel.hookimpl
def kernel_config_section() -> type:
    return ZooConfig


@kernel.hookimpl
def kernel_routes(kernel: kernel.Kernel) -> list:
    from kernel_zoo.routes import HANDLERS

    return HANDLERS


@kernel.hookimpl
def kernel_model_sources(kernel: kernel.Kernel) -> list:
    return [zoo_of(kernel).source]


@kernel.hookimpl
def kernel_authenticate(request: ASGIConnection, kernel: kernel.Kernel) -> kernel.Principal | None:
    zoo = zoo_of(kernel)
    return auth.authenticate(request, kernel, zoo.store)


@kernel.hookimpl
async def kernel_startup(kernel: kernel.Kernel) -> None:
    zoo = zoo_of(kernel)
    zoo.tree.prepare()
    zoo.store.load()
    if not zoo.store.empty():
        return
    # No tokens: say how to make the first one, since every route answers 401 until then.
    log.warning(
        "no tokens in %s: create the first admin token with POST /zoo/v1/public/tokens?is_admin=true",
        zoo.store.path,
    )
