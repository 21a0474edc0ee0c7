"""Endpoints from AIME's `aime_api_endpoint.cfg` TOML files.

A file that cannot be served as written stops the server with a message naming the file
and the key, rather than failing later on a client's request.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kernel
from kernel_jobs.config import JobsConfig

FILE_NAME = "aime_api_endpoint.cfg"
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
#: Names taken by this plugin's own routes.
RESERVED = frozenset({"api", "worker_job_request", "worker_job_progress", "worker_job_result",
                      "worker_check_server_status", "worker_login", "-"})
INPUT_TYPES = frozenset({"string", "str", "integer", "int", "float", "bool", "boolean", "image",
                         "audio", "video", "json", "selection", "chat_context", "text_context"})
#: Inputs every endpoint takes implicitly; they steer the request and never reach a worker.
CONTROL_INPUTS = ("client_session_auth_key", "key", "wait_for_result")
METHODS = frozenset({"GET", "POST"})


@dataclass(frozen=True)
class Endpoint:
    file: Path
    name: str
    title: str
    description: str
    methods: list[str]
    version: Any
    max_queue_length: int
    max_time_in_queue: float
    job_inactivity_timeout: float
    result_lifetime: float
    #: The queue workers pull from; `model:<name>` for an in-process registry model.
    job_type: str
    worker_auth_key: str | None
    request_timeout: float | None
    #: Registry model the kernel runs itself, or None for remote workers.
    model: str | None
    client_keys: dict[str, str]
    provide_worker_meta_data: bool
    #: Most jobs one client may have queued or processing here; 0: no limit.
    client_request_limit: int
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    progress_outputs: dict[str, dict[str, Any]]
    session_vars: dict[str, dict[str, Any]] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The endpoint as `/api/endpoints/<name>` shows it (worker keys left out)."""
        return {
            "name": self.name, "title": self.title, "description": self.description,
            "http_methods": self.methods, "version": self.version,
            "max_queue_length": self.max_queue_length, "max_time_in_queue": self.max_time_in_queue,
            "client_request_limit": self.client_request_limit,
            "parameter_description": {
                "input": self.inputs, "output": self.outputs,
                "progress": {"OUTPUTS": self.progress_outputs},
            },
        }


class _Reader:
    """Typed access to one file's tables, raising StartupErrors that name file and key."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    def fail(self, key: str, problem: str) -> kernel.StartupError:
        return kernel.StartupError(f"jobs endpoint file {self.path}: key {key}: {problem}")

    def table(self, name: str, required: bool = False) -> dict[str, Any]:
        node: Any = self.data
        for part in name.split("."):
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                if required:
                    raise self.fail(f"[{name}]", "missing section")
                return {}
        if not isinstance(node, dict):
            raise self.fail(f"[{name}]", "must be a table")
        return node

    def get(self, section: str, key: str, types: type | tuple[type, ...], default: Any = None,
            required: bool = False) -> Any:
        value = self.table(section).get(key)
        if value is None:
            if required:
                raise self.fail(f"[{section}] {key}", "missing")
            return default
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise self.fail(f"[{section}] {key}", f"expected {_names(types)}, got a boolean")
        if not isinstance(value, types):
            raise self.fail(f"[{section}] {key}", f"expected {_names(types)}, got {type(value).__name__}")
        return value

    def timeout(self, key: str, default: float) -> float:
        value = self.get("ENDPOINT", key, (int, float), default)
        if value <= 0:
            raise self.fail(f"[ENDPOINT] {key}", "must be greater than 0")
        return float(value)


def _names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))


def find_files(roots: list[str]) -> list[Path]:
    files: list[Path] = []
    for root in roots:
        path = Path(root).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(sorted(path.rglob(FILE_NAME)))
        else:
            raise kernel.StartupError(f"jobs endpoints folder {path}: no such file or folder")
    return files


def load_endpoints(config: JobsConfig) -> dict[str, Endpoint]:
    """Every endpoint of the configured folders, by name."""
    endpoints: dict[str, Endpoint] = {}
    for path in find_files(config.endpoints):
        endpoint = read_endpoint(path, config)
        other = endpoints.get(endpoint.name)
        if other is not None:
            raise kernel.StartupError(
                f"jobs endpoint file {path}: key [ENDPOINT] name: {endpoint.name!r} is also the name in {other.file}"
            )
        endpoints[endpoint.name] = endpoint
    return endpoints


def read_endpoint(path: Path, config: JobsConfig) -> Endpoint:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise kernel.StartupError(f"jobs endpoint file {path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise kernel.StartupError(f"jobs endpoint file {path}: cannot be read: {exc.strerror}") from None
    r = _Reader(path, data)
    r.table("ENDPOINT", required=True)
    name = r.get("ENDPOINT", "name", str, required=True)
    if not NAME_RE.match(name) or name in RESERVED:
        raise r.fail("[ENDPOINT] name", f"{name!r} must match [A-Za-z0-9_.-]+ and not be one of {sorted(RESERVED)}")
    if not name.strip("."):
        # Clients resolve `/.` and `/..` away before sending; other runs of dots go with them.
        raise r.fail("[ENDPOINT] name", f"{name!r}: a name of only dots is refused, as no client can reach /. or /..")
    methods = r.get("ENDPOINT", "methods", list, ["GET", "POST"])
    if not methods or any(m not in METHODS for m in methods):
        raise r.fail("[ENDPOINT] methods", f"{methods!r}: use a non-empty list of GET and POST")
    max_queue = r.get("ENDPOINT", "max_queue_length", int, config.max_queue_length)
    if max_queue < 1:
        raise r.fail("[ENDPOINT] max_queue_length", "must be at least 1")

    model = r.get("WORKER", "model", str)
    job_type = r.get("WORKER", "job_type", str)
    auth_key = r.get("WORKER", "auth_key", str)
    if model and job_type:
        raise r.fail("[WORKER] model", "name either a registry model or a job_type, not both")
    if not model and not job_type:
        raise r.fail("[WORKER] job_type", "missing (or set [WORKER] model to serve a registry model)")
    if job_type and not auth_key:
        raise r.fail("[WORKER] auth_key", "missing: workers of this job type need a key")
    request_timeout = r.get("WORKER", "request_timeout", (int, float))
    if request_timeout is not None and request_timeout <= 0:
        raise r.fail("[WORKER] request_timeout", "must be greater than 0")

    keys = r.get("CLIENTS", "authorization_keys", dict, {})
    for key_name, key in keys.items():
        if not isinstance(key, str) or not key:
            raise r.fail(f"[CLIENTS] authorization_keys.{key_name}", "must be a non-empty string")
    limit = r.get("CLIENTS", "client_request_limit", int, config.client_request_limit)
    if limit < 0:
        raise r.fail("[CLIENTS] client_request_limit", "must be 0 (no limit) or more")

    return Endpoint(
        file=path, name=name,
        title=r.get("ENDPOINT", "title", str, name),
        description=r.get("ENDPOINT", "description", str, ""),
        methods=list(methods),
        version=r.get("ENDPOINT", "version", (int, float, str), 0),
        max_queue_length=max_queue,
        max_time_in_queue=r.timeout("max_time_in_queue", config.max_time_in_queue),
        job_inactivity_timeout=r.timeout("job_inactivity_timeout", config.job_inactivity_timeout),
        result_lifetime=r.timeout("result_lifetime", config.result_lifetime),
        job_type=job_type or f"model:{model}",
        worker_auth_key=auth_key,
        request_timeout=float(request_timeout) if request_timeout else None,
        model=model,
        client_keys=dict(keys),
        provide_worker_meta_data=r.get("CLIENTS", "provide_worker_meta_data", bool, False),
        client_request_limit=limit,
        inputs=_inputs(r),
        outputs=_params(r, "OUTPUTS"),
        progress_outputs=_params(r, "PROGRESS.OUTPUTS"),
        session_vars=_params(r, "SESSION.VARS"),
    )


def _params(r: _Reader, section: str) -> dict[str, dict[str, Any]]:
    params = r.table(section)
    for pname, spec in params.items():
        if not isinstance(spec, dict):
            raise r.fail(f"[{section}] {pname}", "must be a table such as { type = \"string\" }")
    return params


def _inputs(r: _Reader) -> dict[str, dict[str, Any]]:
    inputs = _params(r, "INPUTS")
    for pname, spec in inputs.items():
        where = f"[INPUTS] {pname}"
        kind = spec.get("type", "string")
        if kind not in INPUT_TYPES:
            raise r.fail(f"{where}.type", f"unknown type {kind!r}; known: {', '.join(sorted(INPUT_TYPES))}")
        for bound in ("minimum", "maximum", "min", "max", "align", "max_length"):
            value = spec.get(bound)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise r.fail(f"{where}.{bound}", f"expected a number, got {value!r}")
        if kind == "selection" and not (isinstance(spec.get("supported"), list) and spec["supported"]):
            raise r.fail(f"{where}.supported", "a selection needs a non-empty list of supported values")
        for flag in ("required", "auto_convert"):
            if flag in spec and not isinstance(spec[flag], bool):
                raise r.fail(f"{where}.{flag}", f"expected true or false, got {spec[flag]!r}")
    # The original declares these in some files; they are control inputs here, not job data.
    return {k: v for k, v in inputs.items() if k not in CONTROL_INPUTS}
