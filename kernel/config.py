"""Typed configuration in layers: built-in defaults < TOML file < environment < options.

The kernel's own settings are the top-level keys of the TOML file, the variables
`KERNEL_<KEY>` and the unprefixed options. Each plugin owns a section declared through
`kernel_config_section`: the table `[<plugin>]`, the variables `KERNEL_<PLUGIN>_<KEY>`
and its options `--<plugin>-<key>`. Every value is validated by msgspec; a bad one is a
`StartupError` that names where it came from, the key and what was expected.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from kernel.errors import StartupError
from kernel.options import KERNEL, flag_of

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_BYTES = {"kernel": "bytes"}

#: A config field counted in bytes: in the TOML file and the environment it may also be
#: written as its option takes it (`type=kernel.byte_size`): `512M`, `4G`, `4GiB`.
ByteSize = Annotated[int, msgspec.Meta(ge=1, extra=_BYTES)]


def byte_size(value: str) -> int:
    """Bytes from `1048576`, `512K`, `512M`, `4G`, `4GiB` (units of 1024)."""
    match = _SIZE_RE.match(value)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"invalid size {value!r}: use bytes or a K, M, G, T suffix")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


byte_size.__name__ = "size"  # argparse names the type in its error message


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "kernel")


class KernelConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The kernel's own settings."""

    #: Feature plugins to serve, in order; None means the documented default set.
    plugins: list[str] | None = None
    #: Plugins never to load, even when named (a way to switch one off by config).
    block_plugins: list[str] = []
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    config: str | None = None
    state_dir: str = msgspec.field(default_factory=default_state_dir)
    model_dir: list[str] = []
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    token_secret: str | None = None
    #: Threads running model loads and inference at once.
    infer_workers: Annotated[int, msgspec.Meta(ge=1)] = msgspec.field(default_factory=lambda: min(4, os.cpu_count() or 1))
    #: How many steps below the event loop's priority loads and inference run (Linux).
    infer_nice: Annotated[int, msgspec.Meta(ge=0, le=19)] = 0
    #: Models whose runs take less than this many microseconds run on the event loop,
    #: skipping the hop to a pool thread and back (about 0.1 ms); 0 always uses the pool.
    infer_inline_us: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 200
    #: Inference requests that may wait for a thread before the server answers 503.
    infer_queue: Annotated[int, msgspec.Meta(ge=0)] = 64
    #: Loaded models kept at most (least recently used evicted first); None = no limit.
    max_models: Annotated[int, msgspec.Meta(ge=1)] | None = None
    #: Bytes of loaded models kept at most; None = no limit.
    max_model_bytes: ByteSize | None = None
    #: Largest request body accepted, in bytes (a plugin may allow more on its own routes).
    max_body_size: ByteSize = 64 * 1024 * 1024
    #: WebSocket per-message compression; off by default, since binary frames (images,
    #: tensors) rarely shrink and compressing them costs more than sending them.
    ws_compression: bool = False
    #: Seconds a stopping server waits for open requests and WebSockets (long polls,
    #: blocking pulls) before closing them.
    shutdown_timeout: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    #: Seconds a connection has to send a request's headers, from its start or from the end
    #: of the previous response, before it is closed (an idle or trickling client holds a
    #: file descriptor as long as it is left open).
    header_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    #: Seconds a client may take no bytes of what the server waits to send it (a response,
    #: a WebSocket message) before its connection is aborted: what was sent stays pinned in
    #: memory meanwhile. A slow client that keeps taking bytes is never cut off.
    send_timeout: Annotated[float, msgspec.Meta(gt=0)] = 60.0


class Config:
    """The validated config: `config.kernel` and one section per plugin that declares one."""

    def __init__(self, kernel: KernelConfig, sections: dict[str, Any]) -> None:
        self.kernel = kernel
        self.sections = sections

    def section(self, name: str) -> Any:
        """The config of plugin `name` (its Struct), or an empty dict if it declares none."""
        return self.sections.get(name, {})


_PATH_RE = re.compile(r"at `\$\.([A-Za-z0-9_]+)")


def _is_sequence(t: msgspec.inspect.Type) -> bool:
    if isinstance(t, msgspec.inspect.UnionType):
        return any(_is_sequence(x) for x in t.types)
    return isinstance(t, (msgspec.inspect.ListType, msgspec.inspect.TupleType,
                          msgspec.inspect.VarTupleType, msgspec.inspect.SetType,
                          msgspec.inspect.FrozenSetType))


def _is_bytes(t: msgspec.inspect.Type) -> bool:
    if isinstance(t, msgspec.inspect.UnionType):
        return any(_is_bytes(x) for x in t.types)
    return isinstance(t, msgspec.inspect.Metadata) and t.extra == _BYTES


def _from_text(field: msgspec.inspect.Field | None, value: Any) -> Any:
    """A TOML or environment string as its field takes it: a comma-separated list for a
    list, a size with a unit for a `ByteSize` (a bad one raises ValueError)."""
    if field is None or not isinstance(value, str):
        return value
    if _is_sequence(field.type):
        return [item.strip() for item in value.split(",") if item.strip()]
    if _is_bytes(field.type):
        return byte_size(value)
    return value


def _fields(struct: type | None) -> dict[str, msgspec.inspect.Field]:
    if struct is None:
        return {}
    return {f.name: f for f in msgspec.inspect.type_info(struct).fields}


def read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise StartupError(f"config file {path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise StartupError(f"config file {path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise StartupError(f"config file {path}: cannot be read: {exc.strerror}") from None


def build_config(
    schemas: Mapping[str, type | None],
    *,
    file: str | None = None,
    environ: Mapping[str, str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    ignore_sections: frozenset[str] = frozenset(),
) -> Config:
    """Merge the layers and validate each section against its schema.

    `schemas` maps section names (`"kernel"` and each loaded plugin) to msgspec Struct
    types, or None for a plugin without config. `ignore_sections` are sections of plugins
    that are installed but not loaded: their tables and variables are not errors.
    """
    schemas = {KERNEL: KernelConfig, **schemas}
    values: dict[str, dict[str, Any]] = {name: {} for name in schemas}
    origins: dict[tuple[str, str], str] = {}

    def put(section: str, key: str, value: Any, origin: str) -> None:
        values[section][key] = value
        origins[(section, key)] = origin

    def put_text(section: str, key: str, value: Any, origin: str) -> None:
        try:
            value = _from_text(_fields(schemas[section]).get(key), value)
        except ValueError as exc:
            raise StartupError(f"{origin}: invalid value for {key}: {exc}") from None
        put(section, key, value, origin)

    if file:
        for key, value in read_toml(file).items():
            if isinstance(value, dict) and key != KERNEL and (key in schemas or key in ignore_sections):
                known = _fields(schemas.get(key))
                for sub, v in value.items() if key in schemas else ():
                    if schemas[key] is not None and sub not in known:  # a typo would go unnoticed
                        raise StartupError(f"config file {file}: unknown key {sub!r} in [{key}]; "
                                           f"known: {', '.join(sorted(known)) or 'none'}")
                    put_text(key, sub, v, f"config file {file}, [{key}] {sub}")
            elif isinstance(value, dict) and key not in _fields(KernelConfig):
                raise StartupError(
                    f"config file {file}: unknown section [{key}]; loaded plugins: "
                    f"{', '.join(sorted(set(schemas) - {KERNEL})) or 'none'}"
                )
            else:
                put_text(KERNEL, key, value, f"config file {file}, key {key}")

    env = os.environ if environ is None else environ
    plugin_sections = sorted((s for s in schemas if s != KERNEL), key=len, reverse=True)
    for var, raw in env.items():
        if not var.startswith("KERNEL_"):
            continue
        rest = var[len("KERNEL_"):].lower()
        section = next((s for s in plugin_sections if rest.startswith(s + "_")), None)
        if section is None and any(rest.startswith(s + "_") for s in ignore_sections):
            continue
        section = section or KERNEL
        key = rest[len(section) + 1:] if section != KERNEL else rest
        field = _fields(schemas[section]).get(key)
        if field is None and schemas[section] is not None:
            continue  # not ours: other programs may use KERNEL_ variables too
        put_text(section, key, raw, f"environment variable {var}")

    for section, given in (options or {}).items():
        for key, value in given.items():
            put(section, key, value, f"option {flag_of(section, key)}")

    built: dict[str, Any] = {}
    for section, schema in schemas.items():
        if schema is None:
            built[section] = values[section]
            continue
        try:
            built[section] = msgspec.convert(values[section], schema, strict=False)
        except msgspec.ValidationError as exc:
            raise StartupError(_explain(section, str(exc), origins)) from None
    return Config(built.pop(KERNEL), built)


def _explain(section: str, message: str, origins: Mapping[tuple[str, str], str]) -> str:
    where = "the kernel's config" if section == KERNEL else f"plugin {section!r} config"
    match = _PATH_RE.search(message)
    if match:
        key = match.group(1)
        origin = origins.get((section, key), f"{where}, key {key}")
        return f"{origin}: invalid value for {key}: {message}"
    if "unknown field" in message:
        key = message.split("`")[1] if "`" in message else "?"
        origin = origins.get((section, key), where)
        return f"{origin}: unknown key {key!r} in {where}"
    return f"{where}: {message}"


def state_path(config: KernelConfig, *parts: str) -> Path:
    """A path under the state directory, creating the directory (mode 0700) if needed."""
    root = Path(config.state_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return root.joinpath(*parts)
