"""The model registry: what models exist, which backend runs each, and their lifecycle.

Sources (contributed by plugins through `kernel_model_sources`) yield `ModelSpec`s. The
registry names them (qualified names always, plain names when no other source offers the
same one), picks a backend for each, loads lazily with single flight (concurrent first
requests share one load), unloads, and evicts the least recently used model when a count
or byte limit is exceeded. All state changes happen on the event loop; blocking loads and
inference run in the kernel's bounded `InferencePool`.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from kernel.backends import Backend, BackendChoice, Session, choose_backend
from kernel.errors import Conflict, ModelError, NotFound, Unavailable
from kernel.inference import InferencePool

log = logging.getLogger("kernel.registry")

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

#: Model states, as `/-/models` and `kernel models` show them.
AVAILABLE, LOADING, READY, FAILED, UNAVAILABLE = (
    "available",
    "loading",
    "ready",
    "failed",
    "unavailable",
)


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything needed to load one model version.

    `name` is the plain name users type (`yolov8n`); `qualified` names the source too
    (`dir.yolov8n`, `zoo.org.zoo.yolov8n`) and is always unique.
    """

    name: str
    qualified: str
    source: str
    #: The main model file (`.onnx`, `.tflite`, `.weights`, ...).
    path: str
    #: What kind of file `path` is: `onnx`, `darknet`, `tflite`, ... (backends match on it).
    format: str
    #: Other files the model needs (a Darknet `.cfg`), by role.
    files: dict[str, str] = {}
    version: str = "1"
    labels: tuple[str, ...] | None = None
    #: A backend forced by the model's config; None lets the registry choose.
    backend: str | None = None
    processor: str = "cpu"
    #: Backend and plugin settings from the model's config (threads, decoder, ...).
    params: dict[str, Any] = {}
    #: What identifies this version of the files (sizes and modification times): a
    #: rescan that finds a spec differing in anything, this included, reloads the model.
    revision: str = ""


def file_revision(*paths: str | os.PathLike[str]) -> str:
    """A `ModelSpec.revision` from its files' sizes and modification times, so a file
    replaced in place is seen by the next rescan."""
    stats = [os.stat(path) for path in paths]
    return " ".join(f"{st.st_size}:{st.st_mtime_ns}" for st in stats)


class ModelSource(abc.ABC):
    """Somewhere models come from. `name` prefixes the qualified names of its models."""

    name: str

    @abc.abstractmethod
    def scan(self) -> list[ModelSpec]:
        """Every model the source offers now. Called at startup and on each rescan; it may
        block on the file system (the registry calls it in a thread)."""


class Model:
    """One model version in the registry and its state."""

    def __init__(self, spec: ModelSpec, choice: BackendChoice) -> None:
        self.spec = spec
        self.choice = choice
        self.state = AVAILABLE if choice.backend else UNAVAILABLE
        self.error: str | None = None if choice.backend else choice.reason
        self.session: Session | None = None
        self.last_used = 0.0
        self._loading: asyncio.Task[Session] | None = None
        self._active = 0
        #: Sessions unloaded while inference was still running on them: closed when idle.
        self._closing: list[Session] = []
        #: Recent seconds per run of the loaded session (a moving average), None until run.
        self._run_seconds: float | None = None

    @property
    def name(self) -> str:
        return self.spec.qualified

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.spec.qualified,
            "plain_name": self.spec.name,
            "version": self.spec.version,
            "source": self.spec.source,
            "format": self.spec.format,
            "path": self.spec.path,
            "backend": self.choice.backend,
            "backend_reason": self.choice.reason,
            "processor": self.spec.processor,
            "state": self.state,
            "error": self.error,
            "memory_bytes": self.session.memory_bytes if self.session else 0,
        }


class RegistryLimits(msgspec.Struct, frozen=True):
    max_models: int | None = None
    max_bytes: int | None = None


#: Loads of one model a caller waits for before giving up, when each is evicted at once
#: by other models' loads (more models in use than `max_models` allows).
LOAD_ATTEMPTS = 3
#: Inputs larger than this always go to the pool, however fast the model's recent runs.
INLINE_INPUT_BYTES = 64 * 1024


def _timed_infer(session: Session, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    started = time.perf_counter()
    outputs = session.infer(inputs)
    return outputs, time.perf_counter() - started


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


class ModelRegistry:
    def __init__(
        self,
        backends: Mapping[str, Backend],
        pool: InferencePool,
        limits: RegistryLimits | None = None,
        observe: Callable[[str, float], None] | None = None,
        inline_seconds: float = 0.0,
    ) -> None:
        self.backends = backends
        self.pool = pool
        self.inline_seconds = inline_seconds
        self.limits = limits or RegistryLimits()
        self._observe = observe
        self._sources: list[ModelSource] = []
        #: qualified name -> version -> Model
        self._models: dict[str, dict[str, Model]] = {}
        self._plain: dict[str, set[str]] = {}
        self._lru: OrderedDict[Model, None] = OrderedDict()
        self._listeners: list[Callable[[str, Model], None]] = []

    # -- sources and names -------------------------------------------------------------

    def add_source(self, source: ModelSource) -> None:
        if any(s.name == source.name for s in self._sources):
            raise ValueError(f"two model sources are named {source.name!r}")
        self._sources.append(source)

    @property
    def sources(self) -> list[ModelSource]:
        return list(self._sources)

    def subscribe(self, listener: Callable[[str, Model], None]) -> None:
        """Call `listener(event, model)` on `added`, `removed`, `loaded`, `unloaded`,
        `failed`. Listeners run on the event loop and must not block."""
        self._listeners.append(listener)

    def _emit(self, event: str, model: Model) -> None:
        for listener in self._listeners:
            try:
                listener(event, model)
            except Exception:
                log.exception("model event listener failed on %s %s", event, model.name)

    async def rescan(self, source: str | None = None) -> None:
        """Ask every source (or only the one named `source`) again; add new models, drop
        gone ones, reload changed ones. A plugin calls it after changing what its source
        offers (an upload), so the change is served without a restart."""
        found: list[ModelSpec] = []
        for src in self._sources:
            keep = [m.spec for m in self.models() if m.spec.source == src.name]
            if source is not None and src.name != source:
                found.extend(keep)
                continue
            try:
                specs = await asyncio.to_thread(src.scan)
            except Exception as exc:
                log.error("model source %r failed to scan: %s", src.name, exc)
                # Keep what that source offered before rather than dropping its models.
                specs = keep
            found.extend(specs)
        self._apply(found)

    def _apply(self, specs: Iterable[ModelSpec]) -> None:
        wanted: dict[tuple[str, str], ModelSpec] = {}
        for spec in specs:
            problem = self._bad_name(spec)
            if problem:
                log.warning("ignoring model %r from source %r: %s", spec.qualified, spec.source, problem)
                continue
            key = (spec.qualified, spec.version)
            if key in wanted:
                log.warning("model %s version %s is offered twice; keeping the first", *key)
                continue
            wanted[key] = spec
        for model in self.models():
            key = (model.name, model.spec.version)
            if wanted.get(key) != model.spec:
                self._remove(model)
        for key, spec in wanted.items():
            versions = self._models.setdefault(spec.qualified, {})
            if spec.version not in versions:
                model = Model(spec, choose_backend(spec, self.backends))
                versions[spec.version] = model
                self._plain.setdefault(spec.name, set()).add(spec.qualified)
                self._emit("added", model)

    @staticmethod
    def _bad_name(spec: ModelSpec) -> str | None:
        for name in (spec.name, spec.qualified, spec.version):
            if not NAME_RE.match(name):
                return f"{name!r} is not a valid name ([A-Za-z0-9_.-]+)"
        if not spec.qualified.startswith(spec.source + "."):
            return f"qualified name must start with {spec.source + '.'!r}"
        return None

    def _remove(self, model: Model) -> None:
        self._release(model)
        versions = self._models[model.name]
        del versions[model.spec.version]
        if not versions:
            del self._models[model.name]
            plain = self._plain[model.spec.name]
            plain.discard(model.name)
            if not plain:
                del self._plain[model.spec.name]
        self._emit("removed", model)

    def models(self) -> list[Model]:
        """Every model version, sorted by qualified name then version."""
        return [
            versions[v]
            for name in sorted(self._models)
            for versions in (self._models[name],)
            for v in sorted(versions, key=_version_key)
        ]

    def names(self) -> dict[str, str]:
        """Every name a model answers to -> its qualified name (plain names only when unique)."""
        out = {name: name for name in self._models}
        for plain, qualified in self._plain.items():
            if len(qualified) == 1 and plain not in out:
                out[plain] = next(iter(qualified))
        return out

    def describe(self, *models: Model) -> list[dict[str, Any]]:
        """`describe()` of each model (every model when none are given), with `plain_name`
        None where that name reaches no model or another one (ambiguous or shadowed)."""
        names = self.names()
        out = []
        for model in models or self.models():
            described = model.describe()
            if names.get(described["plain_name"]) != described["name"]:
                described["plain_name"] = None
            out.append(described)
        return out

    def resolve(self, name: str) -> str:
        """The qualified name for `name`; NotFound, or Conflict when a plain name is ambiguous."""
        if name in self._models:
            return name
        candidates = self._plain.get(name)
        if not candidates:
            raise NotFound(f"model {name!r} not found")
        if len(candidates) > 1:
            raise Conflict(
                f"model name {name!r} is offered by several sources; "
                f"use one of {', '.join(sorted(candidates))}"
            )
        return next(iter(candidates))

    def get(self, name: str, version: str | None = None) -> Model:
        """The model called `name` (plain or qualified); its highest version by default."""
        versions = self._models[self.resolve(name)]
        if version is None:
            return versions[max(versions, key=_version_key)]
        try:
            return versions[version]
        except KeyError:
            raise NotFound(f"model {name!r} has no version {version!r}") from None

    def versions(self, name: str) -> list[str]:
        return sorted(self._models[self.resolve(name)], key=_version_key)

    # -- lifecycle -----------------------------------------------------------------------

    async def load(self, name: str, version: str | None = None) -> Model:
        """Load the model if it is not loaded yet; concurrent callers share one load."""
        model = self.get(name, version)
        await self._ensure_loaded(model)
        return model

    async def _ensure_loaded(self, model: Model) -> Session:
        for _ in range(LOAD_ATTEMPTS):
            if model.session is not None:
                self._touch(model)
                return model.session
            if model.choice.backend is None:
                raise Unavailable(f"model {model.name!r} cannot be loaded: {model.choice.reason}")
            if model._loading is None:
                model._loading = asyncio.ensure_future(self._load(model))
            # shield: a client that goes away must not cancel a load others are waiting for.
            session = await asyncio.shield(model._loading)
            # Another load may have evicted (and closed) it before this caller's turn came.
            if model.session is session:
                return session
        raise Unavailable(
            f"model {model.name!r} was unloaded as soon as it loaded, {LOAD_ATTEMPTS} times: "
            "more models are in use at once than the model limits allow; retry"
        )

    async def _load(self, model: Model) -> Session:
        backend = self.backends[model.choice.backend]  # type: ignore[index]
        model.state, model.error = LOADING, None
        started = time.perf_counter()
        try:
            session = await self.pool.load(backend.load, model.spec)
        except Exception as exc:
            model.state, model.error = FAILED, f"{type(exc).__name__}: {exc}"
            log.error("loading model %s with %s failed: %s", model.name, backend.name, model.error)
            self._emit("failed", model)
            raise ModelError(f"model {model.name!r} failed to load: {model.error}") from exc
        finally:
            model._loading = None
        if self._models.get(model.name, {}).get(model.spec.version) is not model:
            # A rescan dropped or replaced the model while it loaded.
            _close(model.name, session)
            raise Unavailable(f"model {model.name!r} was removed or changed while it loaded; retry")
        if not session.memory_bytes:
            session.memory_bytes = _file_bytes(model.spec)
        model.session, model.state = session, READY
        log.info(
            "loaded model %s with %s in %.2fs",
            model.name, backend.name, time.perf_counter() - started,
        )
        self._touch(model)
        self._emit("loaded", model)
        self._evict(keep=model)
        return session

    def _touch(self, model: Model) -> None:
        model.last_used = time.monotonic()
        self._lru[model] = None
        self._lru.move_to_end(model)

    def _evict(self, keep: Model) -> None:
        def over() -> bool:
            ready = list(self._lru)
            if self.limits.max_models is not None and len(ready) > self.limits.max_models:
                return True
            total = sum(m.session.memory_bytes for m in ready if m.session)
            return self.limits.max_bytes is not None and total > self.limits.max_bytes

        for model in list(self._lru):
            if not over():
                break
            if model is not keep:
                log.info("evicting least recently used model %s", model.name)
                self.unload_model(model)

    def unload_model(self, model: Model) -> None:
        if self._release(model):
            self._emit("unloaded", model)

    async def unload(self, name: str, version: str | None = None) -> Model:
        model = self.get(name, version)
        if model._loading is not None:
            # Let a load in progress finish first, so its session is not leaked.
            await asyncio.gather(model._loading, return_exceptions=True)
        self.unload_model(model)
        return model

    def _release(self, model: Model) -> bool:
        self._lru.pop(model, None)
        session, model.session, model._run_seconds = model.session, None, None
        if model.state in (READY, FAILED):
            model.state, model.error = AVAILABLE, None
        if session is None:
            return False
        if model._active:
            model._closing.append(session)
        else:
            _close(model.name, session)
        return True

    async def infer(
        self, name: str, inputs: Mapping[str, np.ndarray], version: str | None = None
    ) -> dict[str, np.ndarray]:
        """Run a model (loading it first if needed) in the inference pool, or right here
        when its runs are shorter than a hop to a pool thread and back (`inline_seconds`,
        and small inputs, so one large request cannot hold up the event loop)."""
        model = self.get(name, version)
        session = await self._ensure_loaded(model)
        model._active += 1
        started = time.perf_counter()
        try:
            recent = model._run_seconds
            # Inline only when no other run of the model is going on: a runtime that runs one
            # call at a time would otherwise hold the event loop until the other run ends.
            if (recent is not None and recent < self.inline_seconds and model._active == 1
                    and sum(array.nbytes for array in inputs.values()) <= INLINE_INPUT_BYTES):
                outputs, seconds = _timed_infer(session, inputs)
            else:
                outputs, seconds = await self.pool.run(_timed_infer, session, inputs)
            model._run_seconds = seconds if recent is None else recent + (seconds - recent) / 8
            return outputs
        finally:
            model._active -= 1
            if self._observe:
                self._observe(model.name, time.perf_counter() - started)
            if model._closing and not model._active:
                closing, model._closing = model._closing, []
                for old in closing:
                    _close(model.name, old)

    async def close(self) -> None:
        for model in self.models():
            if model._loading is not None:
                await asyncio.gather(model._loading, return_exceptions=True)
            self._release(model)


def _close(name: str, session: Session) -> None:
    try:
        session.close()
    except Exception:
        log.exception("closing model %s failed", name)


def _file_bytes(spec: ModelSpec) -> int:
    paths = [spec.path, *spec.files.values()]
    return sum(Path(p).stat().st_size for p in paths if Path(p).is_file())
