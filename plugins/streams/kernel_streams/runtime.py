"""What the plugin holds while it serves: its config, logins and data store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kernel_streams.config import StreamsConfig
from kernel_streams.embedded import EmbeddedRedis
from kernel_streams.store import StreamStore
from kernel_streams.users import Logins

#: The key of the runtime in the app's state.
STATE_KEY = "streams"


@dataclass
class Runtime:
    config: StreamsConfig
    logins: Logins
    store: StreamStore = field(init=False)
    embedded: EmbeddedRedis | None = None


def runtime(connection: Any) -> Runtime:
    return connection.app.state[STATE_KEY]
