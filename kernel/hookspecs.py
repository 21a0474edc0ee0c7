"""The hook specifications: the whole contract between the kernel and its plugins.

A plugin is a module (or object) with functions marked `@kernel.hookimpl` whose names
are the hooks below; it may implement any subset, and an implementation may take fewer
arguments than the specification, so adding an argument later never breaks a plugin.
Every hook may return an awaitable where it says so; the kernel awaits it.

The kernel calls each hook per plugin, so it always knows which plugin contributed an
option, a route or a credential. The docstrings are the documentation; `docs/plugins.md`
is checked against them by the test suite.

Contract version 1 (kernel 0.1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection

    from kernel.app import Kernel
    from kernel.auth import Principal
    from kernel.options import OptionGroup
    from kernel.registry import ModelSource

hookspec = pluggy.HookspecMarker("kernel")


# -- command line and config ---------------------------------------------------------------


@hookspec
def kernel_add_options(group: OptionGroup) -> None:
    """Add this plugin's command-line options for `kernel serve`.

    :param group: this plugin's option group; call `group.add_option("--<plugin>-<key>",
        "--alias", help=..., type=...)` with argparse's keywords. The value lands in the
        plugin's config section under `<key>`; aliases keep the original server's flags.

    Called for every installed plugin when building `kernel serve --help`, and for the
    loaded ones when serving. Return value ignored. Since 0.1.
    """


@hookspec
def kernel_config_section() -> type | None:
    """Return the msgspec Struct type of this plugin's config section, or None for none.

    The section is named after the plugin: TOML table `[<plugin>]`, variables
    `KERNEL_<PLUGIN>_<KEY>`, options `--<plugin>-<key>`. The kernel validates the merged
    layers against it and hands the instance back as `kernel.config.section(<plugin>)`.
    Since 0.1.
    """


# -- serving -------------------------------------------------------------------------------


@hookspec
def kernel_routes(kernel: Kernel) -> list[Any] | None:
    """Return the Litestar route handlers, controllers or routers this plugin serves.

    :param kernel: the kernel being assembled (config, registry, auth, storage).

    Paths are the plugin's own choice (the root, a prefix). The kernel mounts them on a
    router that marks them as this plugin's, so `kernel_authenticate` and the error shape
    of this plugin apply. Set an error shape by returning a `litestar.Router` with
    `exception_handlers=kernel.error_handlers(shape)`. A path and method that another
    loaded plugin also serves is a startup error naming both. Since 0.1.
    """


@hookspec
def kernel_model_sources(kernel: Kernel) -> list[ModelSource] | None:
    """Return the model sources this plugin contributes to the registry.

    Each source's `scan()` yields `ModelSpec`s qualified with the source's name; the
    registry scans at startup and on every rescan, and reloads a model whose spec changed.
    Set `revision` to something that changes with the files (`kernel.file_revision(path,
    ...)`: their sizes and modification times), so a file replaced in place counts as a
    change. Since 0.1.
    """


@hookspec(firstresult=True)
def kernel_authenticate(request: ASGIConnection, kernel: Kernel) -> Principal | None:
    """Return the principal of a request to one of this plugin's routes, or None.

    :param request: the HTTP request or WebSocket being guarded.

    Only the plugin that owns the route is asked, so the order of `--plugins` never
    changes who is let in. Return None when the request carries no credential of this
    plugin's form (the kernel then tries `Authorization: Bearer <jwt>`); raise
    `kernel.Unauthorized` for a credential that is present but bad. May return an
    awaitable. Since 0.1.
    """


# -- lifecycle -----------------------------------------------------------------------------


@hookspec
def kernel_startup(kernel: Kernel) -> None:
    """Start what this plugin runs beside the HTTP server (a gRPC server, a connection
    pool, background tasks). May return an awaitable.

    Called once, after the model registry's first scan and before the server accepts
    requests: backends first (so a plugin may load a model through one, configured, in its
    own startup), then plugins in `--plugins` order. An exception stops the server with a
    message naming the plugin and its entry point. Since 0.1.
    """


@hookspec
def kernel_shutdown(kernel: Kernel) -> None:
    """Stop what `kernel_startup` started. May return an awaitable.

    Called once, in the reverse of the startup order (plugins, then backends); exceptions
    are logged and the remaining plugins still shut down. Since 0.1.
    """
