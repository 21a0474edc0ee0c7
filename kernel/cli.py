"""The `kernel` command: serve, plugins, models, token."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import socket
import sys
from collections.abc import Collection, Sequence
from typing import Any

from kernel.__about__ import __version__
from kernel.errors import StartupError

USAGE = """usage: kernel [--version] COMMAND [options]

commands:
  serve     serve plugins over HTTP (kernel serve --help lists every plugin's options)
  plugins   list installed plugins, backends and storage drivers, and whether they import
  models    list the models the registry sees with the current config
  token     mint a token signed with the server's secret
"""


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args or args[0] in ("-h", "--help"):
            print(USAGE, end="")
        elif args[0] == "--version":
            print(f"kernel {__version__}")
        elif args[0] in COMMANDS:
            COMMANDS[args[0]](args[1:])
        else:
            raise StartupError(f"unknown command {args[0]!r}\n{USAGE}", exit_code=2)
    except StartupError as exc:
        print(f"kernel: error: {exc.detail}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


# -- assembling from the command line -----------------------------------------------------


def _prepare(argv: list[str], prog: str) -> Any:
    """Load plugins named by option, environment or config file, parse every option, and
    build the Kernel. `--help` lists the options of every installed plugin."""
    from kernel.app import Kernel, build_parser, choose_plugins, load_plugins
    from kernel.config import build_config, read_toml
    from kernel.discovery import PLUGINS, entry_points
    from kernel.logs import setup_logging
    from kernel.options import KERNEL

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugins")
    pre.add_argument("--block-plugins")
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    config_file = known.config or os.environ.get("KERNEL_CONFIG")
    file_values = read_toml(config_file) if config_file else {}

    def layered(key: str, cli: str | None) -> list[str] | None:
        raw = cli if cli is not None else os.environ.get(f"KERNEL_{key.upper()}")
        if raw is not None:
            return [n.strip() for n in raw.split(",") if n.strip()]
        value = file_values.get(key)
        return list(value) if isinstance(value, list) else None

    installed = entry_points(PLUGINS)
    blocked = layered("block_plugins", known.block_plugins) or ()
    if "-h" in argv or "--help" in argv:
        _help(prog, installed, blocked)
        sys.exit(0)
    names = choose_plugins(layered("plugins", known.plugins), blocked)
    plugin_set = load_plugins(names, blocked=blocked)
    parser = build_parser(plugin_set, prog)
    options, unknown = parser.argparser.parse_known_args(argv)
    if unknown:
        _unknown_options(unknown, installed, names)
    values: dict[str, dict[str, Any]] = {}
    for dest, value in vars(options).items():
        section, _, key = dest.partition(".")
        values.setdefault(section, {})[key] = value
    if config_file:
        values.setdefault(KERNEL, {})["config"] = config_file
    config = build_config(
        plugin_set.schemas(), file=config_file, environ=os.environ, options=values,
        ignore_sections=frozenset(installed) - set(names),
    )
    setup_logging(config.kernel.log_format, config.kernel.log_level)
    return Kernel(plugin_set, config)


def _unknown_options(unknown: list[str], installed: Any, loaded: list[str]) -> None:
    for arg in unknown:
        flag = arg.split("=", 1)[0]
        owner = next((n for n in installed if flag.startswith(f"--{n}-")), None)
        if owner and owner not in loaded:
            raise StartupError(
                f"option {flag} belongs to plugin {owner!r}, which is not loaded; add it to --plugins",
                exit_code=2,
            )
    raise StartupError(f"unrecognized arguments: {' '.join(unknown)}", exit_code=2)


def _help(prog: str, installed: Any, blocked: Collection[str]) -> None:
    from kernel.app import PluginSet, build_parser
    from kernel.discovery import BACKENDS, PLUGINS, survey

    plugins = survey(PLUGINS, skip=blocked)
    backends = survey(BACKENDS, skip=blocked)
    problems = [f"{p.kind} {p.name} ({p.entry_point}) does not import: {p.error}"
                for p in [*plugins, *backends] if p.error]
    plugin_set = PluginSet([p for p in plugins if not p.error], [b for b in backends if not b.error])
    parser = build_parser(plugin_set, prog, problems)
    if problems:
        parser.argparser.epilog = "Problems (those options are not shown): " + "; ".join(problems)
    parser.argparser.print_help()


# -- commands -----------------------------------------------------------------------------


def serve(argv: list[str]) -> None:
    kernel = _prepare(argv, "kernel serve")
    asyncio.run(_serve(kernel))


async def _serve(kernel: Any) -> None:
    import uvicorn

    from kernel.connections import http_protocol, quiet_accept_failures, raise_open_file_limit, ws_protocol
    from kernel.zerocopy import with_zerocopy_send

    config = kernel.config.kernel
    app = kernel.app  # route problems surface before any plugin starts
    listener = _listen(config.host, config.port)  # so does a port already in use
    open_files = raise_open_file_limit()
    asyncio.get_running_loop().set_exception_handler(quiet_accept_failures)
    try:
        await kernel.startup()
        server = uvicorn.Server(uvicorn.Config(
            with_zerocopy_send(app, config.send_timeout), log_config=None, access_log=False, server_header=False, lifespan="on",
            http=http_protocol(config.header_timeout, config.send_timeout, open_files),
            ws=ws_protocol(config.send_timeout) or "none",
            ws_per_message_deflate=config.ws_compression,
            timeout_graceful_shutdown=config.shutdown_timeout,
        ))
        await server.serve(sockets=[listener])
    finally:
        listener.close()
        await kernel.shutdown()


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP;
        # without it a response's header and body writes wait on delayed ACKs (~40 ms).
        listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    listener.listen(2048)
    listener.set_inheritable(True)
    host_shown = f"[{host}]" if ":" in host else host
    logging.getLogger("kernel").info("listening on http://%s:%d", host_shown, listener.getsockname()[1])
    return listener


def plugins(argv: list[str]) -> None:
    from kernel.discovery import BACKENDS, PLUGINS, STORAGE, survey

    parser = argparse.ArgumentParser(prog="kernel plugins", description=plugins.__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    rows = [info.public() for group in (PLUGINS, BACKENDS, STORAGE) for info in survey(group)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    _table(
        ["KIND", "NAME", "DISTRIBUTION", "VERSION", "ENTRY POINT", "STATUS"],
        [[r["kind"], r["name"], r["distribution"] or "-", r["version"] or "-", r["entry_point"],
          "ok" if r["imports"] else f"error: {r['error']}"] for r in rows],
    )


plugins.__doc__ = "List every installed plugin, backend and storage driver."


def models(argv: list[str]) -> None:
    as_json = "--json" in argv
    kernel = _prepare([a for a in argv if a != "--json"], "kernel models")
    asyncio.run(kernel.registry.rescan())
    rows = kernel.registry.describe()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    _table(
        ["NAME", "ALSO", "VERSION", "SOURCE", "FORMAT", "BACKEND", "STATE", "WHY"],
        [[r["name"], r["plain_name"] or "-", r["version"], r["source"], r["format"],
          r["backend"] or "-", r["state"], r["backend_reason"]] for r in rows],
    )


_TTL_RE = re.compile(r"^(\d+)\s*([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _ttl(value: str) -> int:
    match = _TTL_RE.match(value.strip())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"invalid ttl {value!r}: use seconds or 30m, 1h, 7d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def token(argv: list[str]) -> None:
    from kernel.app import Kernel, PluginSet
    from kernel.config import build_config
    from kernel.discovery import BACKENDS, PLUGINS, entry_points

    parser = argparse.ArgumentParser(prog="kernel token", description="Mint a token signed with the server's secret.")
    parser.add_argument("--scope", action="append", required=True,
                        help="scope to grant (repeatable), e.g. oip, zoo:read, admin")
    parser.add_argument("--ttl", type=_ttl, default=3600, help="lifetime: seconds or 30m, 1h, 7d (default: 1h)")
    parser.add_argument("--subject", default="service", help="who the token is for (default: service)")
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--state-dir", help="state directory holding the generated secret")
    parser.add_argument("--token-secret", help="signing secret (default: from config or the state dir)")
    args = parser.parse_args(argv)
    options = {k: v for k in ("state_dir", "token_secret") if (v := getattr(args, k)) is not None}
    # The server's config file serves here too: its plugin and backend tables are not ours to check.
    others = frozenset(entry_points(PLUGINS)) | frozenset(entry_points(BACKENDS))
    config = build_config({}, file=args.config or os.environ.get("KERNEL_CONFIG"),
                          environ=os.environ, options={"kernel": options}, ignore_sections=others)
    kernel = Kernel(PluginSet([], []), config)
    scopes = [s for item in args.scope for s in item.replace(",", " ").split()]
    print(kernel.auth.tokens.issue(args.subject, scopes, args.ttl))


def _table(header: list[str], rows: list[list[Any]]) -> None:
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


COMMANDS = {"serve": serve, "plugins": plugins, "models": models, "token": token}
