"""The kernel's own command-line options."""

from __future__ import annotations

import argparse

from kernel.config import byte_size
from kernel.hookimpl import hookimpl
from kernel.options import OptionGroup


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@hookimpl
def kernel_add_options(group: OptionGroup) -> None:
    group.add_option("--plugins", type=_csv, metavar="NAME,...",
                     help="feature plugins to serve, in order (default: zoo,detect,oip, those installed)")
    group.add_option("--block-plugins", type=_csv, metavar="NAME,...", help="plugins never to load")
    group.add_option("--host", help="address to listen on (default: 127.0.0.1)")
    group.add_option("--port", type=int, help="HTTP port (default: 8080)")
    group.add_option("--config", metavar="FILE", help="TOML config file")
    group.add_option("--state-dir", metavar="DIR", help="where state (the generated token secret) is kept (default: $XDG_STATE_HOME/kernel)")
    group.add_option("--model-dir", action="append", metavar="DIR",
                     help="a model repository to serve (repeatable): <name>/<version>/model.<ext>, <name>/model.<ext> or <name>.<ext>")
    group.add_option("--log-format", choices=["text", "json"], help="log line format (default: text)")
    group.add_option("--log-level", choices=["debug", "info", "warning", "error"], help="(default: info)")
    group.add_option("--token-secret", metavar="SECRET",
                     help="secret signing the kernel's tokens, at least 32 bytes (default: generated in the state dir)")
    group.add_option("--infer-workers", type=int, metavar="N", help="threads running inference at once")
    group.add_option("--infer-nice", type=int, metavar="N",
                     help="priority steps (0-19) below the event loop that loads and inference run at, so health "
                          "checks stay fast while inference keeps the cores busy; it also yields to every other "
                          "process (Linux; default: 0)")
    group.add_option("--infer-inline-us", type=int, metavar="US",
                     help="run models whose recent runs took under US microseconds on the event loop, skipping "
                          "the hop to a pool thread (inputs over 64 KiB never are; 0: always the pool; default: 200)")
    group.add_option("--infer-queue", type=int, metavar="N",
                     help="inference requests that may wait for a thread before the server answers 503 (default: 64)")
    group.add_option("--max-models", type=int, metavar="N", help="loaded models kept at most, least recently used evicted")
    group.add_option("--max-model-bytes", type=byte_size, metavar="SIZE", help="memory of loaded models kept at most, e.g. 2G")
    group.add_option("--max-body-size", type=byte_size, metavar="SIZE", help="largest request body, e.g. 16M (default: 64M)")
    group.add_option("--shutdown-timeout", type=float, metavar="SECONDS",
                     help="how long a stopping server waits for open requests and WebSockets (default: 5)")
    group.add_option("--header-timeout", type=float, metavar="SECONDS",
                     help="close a connection that has not sent a request's headers this long after it opened "
                          "or its previous response ended (default: 30)")
    group.add_option("--send-timeout", type=float, metavar="SECONDS",
                     help="abort a connection whose client takes none of a response or WebSocket message "
                          "for this long (default: 60)")
    group.add_option("--ws-compression", action=argparse.BooleanOptionalAction,
                     help="WebSocket per-message compression (default: off)")
