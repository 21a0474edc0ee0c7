"""A kernel started on an event loop of its own, for synchronous backend tests."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np

import kernel

T = TypeVar("T")


class Served:
    def __init__(self, k: kernel.Kernel) -> None:
        self.kernel = k
        self.loop = asyncio.new_event_loop()
        self.run(k.startup())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def infer(self, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run(self.kernel.registry.infer(name, inputs))

    def session(self, name: str) -> kernel.Session:
        model = self.run(self.kernel.registry.load(name))
        assert model.session is not None
        return model.session

    def close(self) -> None:
        self.run(self.kernel.shutdown())
        self.loop.close()
