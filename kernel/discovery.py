"""Finding plugins: stevedore loads entry points, and every failure is loud.

Three groups: `kernel.plugins` (feature plugins, loaded by name in the order given),
`kernel.backends` (every installed one not blocked), `kernel.storage` (by URL scheme, on
demand). A plugin named but not installed, an import that fails, or two distributions
claiming one name is a `StartupError` naming the plugin, its entry point and the cause. A
backend that does not import is logged and left out: nobody asked for it by name, and the
server may not need it.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Collection
from typing import Any

import msgspec
from stevedore import NamedExtensionManager
from stevedore.exception import MultipleMatches
from stevedore.extension import error_on_conflict

from kernel.errors import StartupError

PLUGINS, BACKENDS, STORAGE = "kernel.plugins", "kernel.backends", "kernel.storage"
GROUPS = {PLUGINS: "plugin", BACKENDS: "backend", STORAGE: "storage"}
#: Plugin and backend names: they become option prefixes, config tables and variables.
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
log = logging.getLogger("kernel")


class PluginInfo(msgspec.Struct, kw_only=True):
    """One entry point and what became of it."""

    name: str
    kind: str
    entry_point: str
    distribution: str | None = None
    version: str | None = None
    error: str | None = None
    obj: Any = None

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "entry_point": self.entry_point,
            "distribution": self.distribution, "version": self.version,
            "imports": self.error is None, "error": self.error,
        }


def _info(group: str, ep: importlib.metadata.EntryPoint, **extra: Any) -> PluginInfo:
    # stevedore's cached entry points lack `dist`; importlib.metadata's have it.
    dist = getattr(entry_points(group).get(ep.name), "dist", None)
    return PluginInfo(
        name=ep.name, kind=GROUPS[group], entry_point=ep.value,
        distribution=dist.name if dist else None, version=dist.version if dist else None,
        **extra,
    )


def _cause(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def entry_points(group: str) -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=group)}


def survey(group: str, skip: Collection[str] = ()) -> list[PluginInfo]:
    """Every installed entry point of `group` but those named in `skip` (never imported),
    each imported to see whether it works."""
    infos: dict[str, PluginInfo] = {}

    def failed(_mgr: object, ep: importlib.metadata.EntryPoint, exc: BaseException) -> None:
        infos[ep.name] = _info(group, ep, error=_cause(exc))

    manager = NamedExtensionManager(
        group, [name for name in entry_points(group) if name not in skip], on_load_failure_callback=failed,
        on_missing_entrypoints_callback=lambda missing: None,  # installed while this process ran
    )
    for ext in manager.extensions:
        infos[ext.name] = _info(group, ext.entry_point, obj=ext.plugin)
        if group != STORAGE and not NAME_RE.match(ext.name):  # storage is named by URL scheme
            infos[ext.name].error = f"{GROUPS[group]} name {ext.name!r} must match [a-z][a-z0-9_]*"
    return [infos[name] for name in sorted(infos)]


def load(group: str, names: list[str]) -> list[PluginInfo]:
    """Load the named entry points of `group` in the order given, or raise StartupError."""
    available = entry_points(group)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise StartupError(
            f"unknown {GROUPS[group]} {', '.join(map(repr, unknown))}; installed: "
            f"{', '.join(sorted(available)) or 'none'}",
            exit_code=2,
        )

    def failed(_mgr: object, ep: importlib.metadata.EntryPoint, exc: BaseException) -> None:
        raise StartupError(
            f"{GROUPS[group]} {ep.name!r} (entry point {ep.value}) failed to import: {_cause(exc)}"
        ) from exc

    try:
        manager = NamedExtensionManager(
            group, names, name_order=True, on_load_failure_callback=failed,
            on_missing_entrypoints_callback=lambda missing: None,  # checked above
            conflict_resolver=error_on_conflict,
        )
    except MultipleMatches as exc:
        raise StartupError(str(exc)) from None
    missing = [n for n in names if n not in manager.names()]
    if missing:
        # importlib.metadata sees them, stevedore's per-process cache does not: they were
        # installed after this process first looked.
        raise StartupError(
            f"{GROUPS[group]} {', '.join(map(repr, missing))} installed while this process ran; restart it"
        )
    return [_info(group, ext.entry_point, obj=ext.plugin) for ext in manager.extensions]


def load_backends(blocked: Collection[str] = ()) -> list[PluginInfo]:
    """Every installed backend that imports and is not blocked; the others are logged.
    A blocked one is not imported at all, so blocking also keeps out one whose import
    hangs or has side effects."""
    for name in sorted(set(blocked) & set(entry_points(BACKENDS))):
        log.info("backend %r is blocked (block_plugins); not loading it", name)
    usable = []
    for info in survey(BACKENDS, skip=blocked):
        if info.error:
            log.error("backend %r (entry point %s) is left out: %s", info.name, info.entry_point, info.error)
        else:
            usable.append(info)
    return usable
