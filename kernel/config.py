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
    max_model_bytes: Annotated[int, msgspec.Meta(ge=1)] | None = None
    #: Largest request body accepted, in bytes (a plugin may allow more on its own routes).
    max_body_size: Annotated[int, msgspec.Meta(ge=1)] = 64 * 1024 * 1024
    #: WebSocket per-message compression; off by default, since binary frames (images,
    #: tensors) rarely shrink and compressing them costs more than sending them.
    ws_compression: bool = False
    #: Seconds a stopping server waits for open requests and WebSockets (long polls,
    #: blocking pulls) before closing them.
    shutdown_timeout: Annotated[float, msgspec.Meta(ge=0)] = 5.0


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

    if file:
        for key, value in read_toml(file).items():
            if isinstance(value, dict) and key != KERNEL and (key in schemas or key in ignore_sections):
                if key in schemas:
                    for sub, v in value.items():
                        put(key, sub, v, f"config file {file}, [{key}] {sub}")
            elif isinstance(value, dict) and key not in _fields(KernelConfig):
                raise StartupError(
                    f"config file {file}: unknown section [{key}]; loaded plugins: "
                    f"{', '.join(sorted(set(schemas) - {KERNEL})) or 'none'}"
                )
            else:
                put(KERNEL, key, value, f"config file {file}, key {key}")

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
        value: Any = raw
        if field is not None and _is_sequence(field.type):
            value = [item.strip() for item in raw.split(",") if item.strip()]
        put(section, key, value, f"environment variable {var}")

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
