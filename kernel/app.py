"""Assembling a server from plugins: the `Kernel` and the Litestar app it builds.

`load_plugins` finds and registers plugins; `build_parser` collects their options;
`Kernel` holds the validated config, the model registry, auth and storage, and builds one
Litestar app from every plugin's routes. `create_kernel` does all of it in one call, for
tests and embedding.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import Any

import pluggy
from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.config import default_operation_id_creator
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.routes import HTTPRoute
from litestar.types import Receive, Scope, Send

from kernel import hookspecs
from kernel.__about__ import __version__
from kernel.auth import Auth, check_secret
from kernel.backends import Backend
from kernel.config import Config, build_config
from kernel.discovery import NAME_RE, PLUGINS, STORAGE, PluginInfo, load, load_backends
from kernel.errors import StartupError
from kernel.errors_http import ErrorShape, error_handlers
from kernel.inference import InferencePool
from kernel.logs import new_request_id, request_id
from kernel.metrics import Metrics
from kernel.options import KERNEL, Parser
from kernel.registry import READY, Model, ModelRegistry, ModelSource, RegistryLimits
from kernel.storage import FileStorage, Storage

log = logging.getLogger("kernel")

#: The feature plugins served when none are named (those of them that are installed).
DEFAULT_PLUGINS = ("zoo", "detect", "oip")
#: Built-in behaviour, registered like any plugin (Datasette's and pytest's way).
BUILTINS = ("kernel.builtins.core", "kernel.builtins.internal", "kernel.builtins.modeldir")


class PluginSet:
    """The plugin manager with every loaded plugin, backend and built-in registered."""

    def __init__(self, plugins: list[PluginInfo], backends: list[PluginInfo]) -> None:
        """Register built-ins, `plugins` (loaded objects) and `backends` (Backend classes)."""
        self.pm = pluggy.PluginManager("kernel")
        self.pm.add_hookspecs(hookspecs)
        self.plugins = plugins
        self.backend_infos = backends
        self.backends: dict[str, Backend] = {}
        #: pm name -> config section (built-ins share the kernel's section)
        self.sections: dict[str, str] = {}
        self._callers: dict[tuple[str, str], pluggy.HookCaller] = {}
        for module in BUILTINS:
            self.pm.register(__import__(module, fromlist=["_"]), name=module)
            self.sections[module] = KERNEL
        for info in plugins:
            self._register(info.obj, info, info.name)
        for info in backends:
            try:
                backend = info.obj()
            except Exception as exc:
                raise StartupError(
                    f"backend {info.name!r} (entry point {info.entry_point}) failed to start: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(backend, Backend):
                raise StartupError(
                    f"backend {info.name!r} (entry point {info.entry_point}) is not a kernel.Backend"
                )
            backend.name = info.name
            self.backends[info.name] = backend
            self._register(backend, info, info.name)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise StartupError(f"plugin {exc.plugin!r}: {exc}") from None

    def _register(self, obj: object, info: PluginInfo, name: str) -> None:
        if not NAME_RE.match(name):
            raise StartupError(f"{info.kind} name {name!r} must match [a-z][a-z0-9_]*")
        if name in self.sections:
            raise StartupError(f"{info.kind} {name!r} clashes with another plugin of that name")
        try:
            self.pm.register(obj, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise StartupError(
                f"{info.kind} {name!r} (entry point {info.entry_point}) is not a valid plugin: {exc}"
            ) from None
        self.sections[name] = name

    def start_order(self) -> list[str]:
        """Built-ins, then backends (a plugin's own startup may load a model through one,
        which must have its config by then), then plugins in the order asked for."""
        return sorted(self.sections, key=lambda name: (name not in BUILTINS, name not in self.backends))

    def info(self, name: str) -> PluginInfo | None:
        return next((i for i in [*self.plugins, *self.backend_infos] if i.name == name), None)

    def hook(self, name: str, hook: str) -> pluggy.HookCaller:
        """`hook` as implemented by the plugin registered as `name` alone."""
        caller = self._callers.get((name, hook))
        if caller is None:
            if self.pm.get_plugin(name) is None:
                return _none
            others = [p for n, p in self.pm.list_name_plugin() if n != name]
            caller = self._callers[(name, hook)] = self.pm.subset_hook_caller(hook, others)
        return caller

    def call(self, name: str, hook: str, **kwargs: Any) -> list[Any]:
        """Call one plugin's hook, wrapping its exceptions in a StartupError naming it."""
        try:
            return self.hook(name, hook)(**kwargs)
        except StartupError:
            raise
        except Exception as exc:
            raise StartupError(f"{self.describe(name)} failed in {hook}: {type(exc).__name__}: {exc}") from exc

    def collect(self, name: str, hook: str, kind: type | None = None, **kwargs: Any) -> list[Any]:
        """The items of the lists one plugin's hook returns (None counts as none), each a
        `kind` when given; anything else is a StartupError naming the plugin."""
        items = []
        for result in self.call(name, hook, **kwargs):
            if result is None:
                continue
            if not isinstance(result, (list, tuple)):
                raise StartupError(f"{self.describe(name)}: {hook} must return a list, not {type(result).__name__}")
            for item in result:
                if kind is not None and not isinstance(item, kind):
                    raise StartupError(f"{self.describe(name)}: {hook} returned a {type(item).__name__}, "
                                       f"not a {kind.__module__.split('.')[0]}.{kind.__name__}")
            items += result
        return items

    def describe(self, name: str) -> str:
        info = self.info(name)
        if info is None:
            return f"built-in {name!r}"
        return f"{info.kind} {name!r} (entry point {info.entry_point})"

    def schemas(self) -> dict[str, type | None]:
        out: dict[str, type | None] = {}
        for name, section in self.sections.items():
            if section == KERNEL:
                continue
            schema = self.call(name, "kernel_config_section")
            out[section] = schema[0] if schema else None
        return out


def _none(**_kwargs: Any) -> list[Any]:
    return []


def choose_plugins(names: Sequence[str] | None, blocked: Sequence[str] = ()) -> list[str]:
    """The feature plugins to load: those named, or the installed default set; minus blocked."""
    from kernel.discovery import entry_points

    if names is None:
        installed = entry_points(PLUGINS)
        names = [n for n in DEFAULT_PLUGINS if n in installed]
        log.info("no plugins named; serving the default set: %s", ", ".join(names) or "none installed")
    chosen = []
    for name in names:
        if name in blocked:
            log.warning("plugin %r is blocked (block_plugins); not loading it", name)
        elif name in chosen:
            raise StartupError(f"plugin {name!r} is named twice", exit_code=2)
        else:
            chosen.append(name)
    return chosen


def _log_hook_call(outcome: Any, hook: str, impls: list[Any], _kwargs: Mapping[str, Any]) -> None:
    if impls:  # the kernel asks each plugin in turn, most of which have no such hook
        result = outcome.exception if outcome.exception is not None else outcome.get_result()
        log.getChild("hooks").debug("%s of %s -> %r", hook, ", ".join(i.plugin_name for i in impls), result)


def load_plugins(
    names: Sequence[str],
    extra: Mapping[str, object] | None = None,
    extra_backends: Mapping[str, type[Backend]] | None = None,
    blocked: Sequence[str] = (),
) -> PluginSet:
    """Load the named feature plugins and every installed backend not `blocked` into one
    PluginSet.

    `extra` and `extra_backends` add in-process plugins and Backend classes by name
    (tests, embedding)."""
    infos = load(PLUGINS, [n for n in names if not (extra and n in extra)])
    by_name = {i.name: i for i in infos}
    for name, obj in (extra or {}).items():
        by_name[name] = PluginInfo(name=name, kind="plugin", entry_point="<in-process>", obj=obj)
    ordered = [by_name[n] for n in names if n in by_name]
    ordered += [i for n, i in by_name.items() if n not in names]
    backends = load_backends(blocked)
    for name, cls in (extra_backends or {}).items():
        backends.append(PluginInfo(name=name, kind="backend", entry_point="<in-process>", obj=cls))
    return PluginSet(ordered, backends)


def build_parser(plugins: PluginSet, prog: str = "kernel serve", problems: list[str] | None = None) -> Parser:
    """The `kernel serve` parser with every plugin's options grouped under its name.

    With `problems` (for `--help`), a plugin whose options cannot be added is noted there
    instead of stopping, so help still shows everything else."""
    parser = Parser(prog, "Serve the given plugins in one process.")
    kernel_group = parser.group(KERNEL, "kernel", "The kernel's own options.")
    for name, section in plugins.sections.items():
        if section == KERNEL:
            plugins.call(name, "kernel_add_options", group=kernel_group)
    for name, section in plugins.sections.items():
        if section == KERNEL:
            continue
        info = plugins.info(name)
        title = f"{name} ({info.kind} from {info.distribution or 'this process'}"
        title += f" {info.version})" if info.version else ")"
        try:
            plugins.call(name, "kernel_add_options", group=parser.group(section, title))
        except StartupError as exc:
            if problems is None:
                raise
            problems.append(exc.detail)
    return parser


class Kernel:
    """The assembled server: config, plugins, model registry, auth, storage, metrics."""

    def __init__(self, plugins: PluginSet, config: Config) -> None:
        self.plugin_set = plugins
        self.config = config
        self.metrics = Metrics()
        self.pool = InferencePool(config.kernel.infer_workers, config.kernel.infer_queue, config.kernel.infer_nice)
        self.registry = ModelRegistry(
            plugins.backends,
            self.pool,
            RegistryLimits(config.kernel.max_models, config.kernel.max_model_bytes),
            observe=lambda name, s: self.metrics.inference_seconds.labels(name).observe(s),
            inline_seconds=config.kernel.infer_inline_us / 1e6,
        )
        self.registry.subscribe(self._count_loaded)
        self.auth = Auth(self)
        if config.kernel.log_level == "debug":
            # Every hook call from here on and its result, one line each, for plugin authors
            # chasing a wiring problem (options and config were read before logging was set).
            plugins.pm.add_hookcall_monitoring(lambda *_: None, _log_hook_call)
        self.started = False
        self._started: list[str] = []
        for name in plugins.sections:
            for source in plugins.collect(name, "kernel_model_sources", ModelSource, kernel=self):
                try:
                    self.registry.add_source(source)
                except ValueError as exc:
                    raise StartupError(f"{plugins.describe(name)}: {exc}") from None

    # -- for plugins ---------------------------------------------------------------------

    @property
    def plugins(self) -> list[PluginInfo]:
        """The loaded feature plugins, in `--plugins` order."""
        return list(self.plugin_set.plugins)

    @property
    def backends(self) -> dict[str, Backend]:
        return dict(self.plugin_set.backends)

    def plugin_hook(self, name: str, hook: str) -> pluggy.HookCaller:
        return self.plugin_set.hook(name, hook)

    @staticmethod
    def error_handlers(shape: ErrorShape) -> dict[type[Exception], Callable[..., Any]]:
        """Exception handlers answering errors in `shape` (see `kernel.error_handlers`)."""
        return error_handlers(shape)

    def storage(self, url: str) -> Storage:
        """A storage driver for `url`, chosen by its scheme (`file://` or a plain path is
        the built-in file driver; others come from `kernel.storage` entry points)."""
        scheme = url.split("://", 1)[0] if "://" in url else "file"
        if scheme == "file":
            return FileStorage.from_url(url)
        (info,) = load(STORAGE, [scheme])
        return info.obj.from_url(url)

    # -- lifecycle -----------------------------------------------------------------------

    async def startup(self) -> None:
        """Scan model sources, then start each plugin in order. Runs once."""
        if self.started:
            return
        started = time.perf_counter()
        if self.config.kernel.token_secret is not None:
            check_secret(self.config.kernel.token_secret)  # not only when a token is first checked
        await self.registry.rescan()
        for name in self.plugin_set.start_order():
            results = self.plugin_set.call(name, "kernel_startup", kernel=self)
            self._started.append(name)
            for result in results:
                if inspect.isawaitable(result):
                    try:
                        await result
                    except Exception as exc:
                        raise StartupError(
                            f"{self.plugin_set.describe(name)} failed to start: {type(exc).__name__}: {exc}"
                        ) from exc
        self.started = True
        log.info(
            "started %s with %d model(s) in %.2fs",
            ", ".join(p.name for p in self.plugins) or "no plugins",
            len(self.registry.models()), time.perf_counter() - started,
        )

    async def shutdown(self) -> None:
        """Stop plugins in reverse order, then unload every model."""
        for name in reversed(self._started):
            try:
                for result in self.plugin_set.hook(name, "kernel_shutdown")(kernel=self):
                    if inspect.isawaitable(result):
                        await result
            except Exception:
                log.exception("%s failed to shut down", self.plugin_set.describe(name))
        self._started.clear()
        self.started = False
        await self.registry.close()
        self.pool.close()

    def _count_loaded(self, _event: str, _model: Model) -> None:
        self.metrics.models_loaded.set(sum(m.state == READY for m in self.registry.models()))

    # -- the app -------------------------------------------------------------------------

    @cached_property
    def app(self) -> Litestar:
        """The Litestar app serving every plugin's routes (built on first use)."""
        routers = []
        claimed: dict[tuple[str, str], str] = {}
        for name in self.plugin_set.sections:
            handlers = self.plugin_set.collect(name, "kernel_routes", kernel=self)
            if not handlers:
                continue
            try:
                router = Router(path="/", route_handlers=handlers, opt={"kernel_plugin": name})
            except Exception as exc:
                raise StartupError(
                    f"{self.plugin_set.describe(name)} has an invalid route: {type(exc).__name__}: {exc}"
                ) from exc
            for route in router.routes:
                methods = sorted(route.methods) if isinstance(route, HTTPRoute) else ["WEBSOCKET"]
                for method in methods:
                    key = (method, re.sub(r"{[^}]*}", "{}", route.path))
                    if method in ("HEAD", "OPTIONS") and key in claimed:
                        continue
                    if key in claimed:
                        raise StartupError(
                            f"route {method} {route.path} is claimed by both "
                            f"{self.plugin_set.describe(claimed[key])} and {self.plugin_set.describe(name)}"
                        )
                    claimed[key] = name
            routers.append((name, router))
        try:
            return self._litestar(routers)
        except Exception as exc:
            culprit = next((n for n, r in routers if not _builds(r)), None)
            where = self.plugin_set.describe(culprit) if culprit else "the app"
            raise StartupError(f"{where} has an invalid route: {type(exc).__name__}: {exc}") from exc

    def _litestar(self, routers: list[tuple[str, Router]]) -> Litestar:
        return _KernelApp(
            route_handlers=[router for _, router in routers],
            exception_handlers=error_handlers(),
            on_startup=[self.startup],
            on_shutdown=[self.shutdown],
            openapi_config=OpenAPIConfig(
                title="kernel", version=__version__, path="/docs",
                render_plugins=[SwaggerRenderPlugin(path="/")],
                operation_id_creator=_operation_id,
            ),
            state=State({"kernel": self}),
            request_max_body_size=self.config.kernel.max_body_size,
            logging_config=None,
        )


def _operation_id(handler: Any, method: Any, components: list[Any]) -> str:
    """Litestar's operation id prefixed with the owning plugin: two plugins may both have
    a `health` handler (`/health` and `/-/health` would otherwise share an id)."""
    plugin = handler.opt.get("kernel_plugin", "kernel")
    prefix = "Kernel" if plugin.startswith("kernel.") else plugin.title().replace("_", "")
    return prefix + default_operation_id_creator(handler, method, components)


def _builds(router: Router) -> bool:
    """Whether `router` alone makes a valid app: finds the plugin behind a failed build."""
    try:
        Litestar(route_handlers=[router], openapi_config=None, logging_config=None)
    except Exception:
        return False
    return True


class _KernelApp(Litestar):
    """Litestar, with a request id, an access log line and metrics for every HTTP request,
    those no route matched (404, 405) included: Litestar's own middleware only wraps
    matched routes."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await super().__call__(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = new_request_id(headers.get(b"x-request-id", b"").decode("latin-1") or None)
        token = request_id.set(rid)
        if scope["type"] == "websocket":
            try:
                await super().__call__(scope, receive, send)
            finally:
                request_id.reset(token)
            return
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await super().__call__(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            kernel: Kernel = self.state["kernel"]
            handler = scope.get("route_handler")
            plugin = handler.opt.get("kernel_plugin", "") if handler is not None else ""
            # Unmatched paths share one label: each would otherwise be a metric series of its own.
            route = scope.get("path_template", "(unmatched)") if handler is not None else "(unmatched)"
            kernel.metrics.requests.labels(plugin, scope["method"], route, str(status)).inc()
            kernel.metrics.request_seconds.labels(plugin, scope["method"], route).observe(elapsed)
            client = (scope.get("client") or ("-",))[0]
            _access.info('%s "%s %s" %d %.1fms', client, scope["method"], scope["path"], status, elapsed * 1000)
            request_id.reset(token)


_access = logging.getLogger("kernel.access")


def create_kernel(
    plugins: Sequence[str] | None = (),
    *,
    extra: Mapping[str, object] | None = None,
    backends: Mapping[str, type[Backend]] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Kernel:
    """Load `plugins` (entry-point names) plus `extra` in-process plugins (and `backends`,
    in-process Backend classes, beside the installed ones) and build a
    Kernel with config from the file, environment (default: none) and `options`
    ({section: {key: value}}, as the command line would give them)."""
    names = choose_plugins(plugins)
    names += [n for n in extra or {} if n not in names]
    plugin_set = load_plugins(names, extra, backends)
    config = build_config(
        plugin_set.schemas(), file=config_file, environ=environ or {}, options=options,
    )
    return Kernel(plugin_set, config)
