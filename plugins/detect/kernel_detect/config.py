"""The `[detect]` config section, and pyzm's `ServerConfig` YAML (`--detect-config`).

Options, TOML keys and `KERNEL_DETECT_*` variables fill `DetectConfig` through the kernel.
A pyzm YAML file then replaces the settings it names, as `python -m pyzm.serve --config`
does; what belongs to the kernel there (host, port, workers, token secret) is ignored
with a log line, since one kernel serves every plugin on one port with one secret.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from kernel import ByteSize, StartupError
from kernel_detect.filters import PatternError, compile_pattern

log = logging.getLogger("kernel.detect")

Processor = Literal["cpu", "gpu", "tpu"]
FrameStrategy = Literal["first", "first_new", "most", "most_unique", "most_models"]
FRAME_STRATEGIES: tuple[str, ...] = FrameStrategy.__args__  # type: ignore[attr-defined]
DEFAULT_BASE_PATH = "/var/lib/zmeventnotification/models"


class DetectConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Settings of the detect plugin (`--detect-<key>`, `[detect] <key>`)."""

    #: Model names, `Published name=spec`, absolute weight paths, or `all` (lazy).
    models: list[str] = msgspec.field(default_factory=lambda: ["all"])
    base_path: str = DEFAULT_BASE_PATH
    processor: Processor = "cpu"
    auth: bool = False
    auth_user: str = "admin"
    auth_password: str = ""
    token_expiry: Annotated[int, msgspec.Meta(ge=1)] = 3600
    #: pyzm ServerConfig YAML; its fields replace the settings above.
    config: str | None = None
    #: Mount every route under this path (`/pyzm`), so detect can sit beside other plugins.
    prefix: str = ""
    min_confidence: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.3
    pattern: str = ".*"
    frame_strategy: FrameStrategy = "most_models"
    max_upload_bytes: Annotated[int, msgspec.Meta(ge=1)] = 50 * 1024 * 1024
    #: Larger images are refused from their header (a small upload can decode to gigabytes).
    max_pixels: Annotated[int, msgspec.Meta(ge=1)] = 50_000_000
    #: Bytes of decoded frames all requests hold at once (a 1080p frame is 6 MB); past
    #: it a request is answered 503. One frame is always let in: `max_pixels` bounds it.
    frame_memory: ByteSize = 512 * 1024 * 1024
    fetch_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    fetch_max_bytes: Annotated[int, msgspec.Meta(ge=1)] = 20 * 1024 * 1024
    fetch_max_redirects: Annotated[int, msgspec.Meta(ge=0)] = 3
    #: Fetch only from these hosts (`zm.example.com`, `host:port`) or URL prefixes; empty: any.
    fetch_allow: list[str] = []
    #: Frames fetched at once per /detect_urls request.
    fetch_parallel: Annotated[int, msgspec.Meta(ge=1)] = 4
    #: Frames (files or URLs) one /detect or /detect_urls request may name: pyzm sends a
    #: few (its default frame set is snapshot, alarm and frame 1).
    max_frames: Annotated[int, msgspec.Meta(ge=1)] = 32
    #: Zones one request may give, and points one zone may have.
    max_zones: Annotated[int, msgspec.Meta(ge=1)] = 100
    max_zone_points: Annotated[int, msgspec.Meta(ge=3)] = 1000
    #: Seconds of pattern matching one request may use (a pattern can backtrack for hours).
    pattern_timeout: Annotated[float, msgspec.Meta(gt=0)] = 0.5


class ModelEntry(msgspec.Struct, kw_only=True):
    """One model detect serves from its own source, as `--models` or the YAML names it."""

    #: The name clients ask for (pyzm allows any text, spaces included).
    published: str
    #: What to resolve against the base path: a name, a stem or an absolute path.
    spec: str
    weights: str | None = None
    config: str | None = None
    labels: str | None = None
    processor: Processor | None = None
    min_confidence: float | None = None
    model_width: int | None = None
    model_height: int | None = None
    decoder: str | None = None


class Settings(msgspec.Struct, kw_only=True):
    """The effective settings: `DetectConfig` with a pyzm YAML applied."""

    config: DetectConfig
    #: None means `all`: every model under the base path.
    entries: list[ModelEntry] | None


_KERNEL_OWNED = ("host", "port", "workers", "token_secret", "log_level", "allow_cpu_fallback", "gpu_retry_seconds")


def settings(config: DetectConfig) -> Settings:
    """Apply the YAML of `config.config` (if any) and parse the model list."""
    detailed: list[ModelEntry] | None = None
    _check_pattern(config.pattern, "--detect-pattern")
    if config.config:
        config, detailed = _apply_yaml(config, Path(config.config).expanduser())
    if detailed is not None:
        return Settings(config=config, entries=detailed)
    if config.models == ["all"]:
        return Settings(config=config, entries=None)
    if "all" in config.models:
        raise StartupError("--detect-models: 'all' cannot be combined with other model names")
    return Settings(config=config, entries=[parse_model(m) for m in config.models])


def _check_pattern(pattern: str, where: str) -> None:
    """A configured pattern refused (see `filters.compile_pattern`) stops the server here:
    found on the first request instead, every /detect would blame the client for it."""
    try:
        compile_pattern(pattern)
    except PatternError as exc:
        raise StartupError(f"{where}: {pattern!r} {exc}") from None


def parse_model(text: str) -> ModelEntry:
    """`yolo11s`, `/abs/model.onnx` or `Published name=spec`."""
    published, sep, spec = text.partition("=")
    if not sep:
        return ModelEntry(published="", spec=text.strip())
    return ModelEntry(published=published.strip(), spec=spec.strip())


def _apply_yaml(config: DetectConfig, path: Path) -> tuple[DetectConfig, list[ModelEntry] | None]:
    """The config with the file's ServerConfig fields applied, and its detailed models
    (`detector_config.models`), which replace `models` when present."""
    import yaml

    where = f"--detect-config {path}"
    try:
        raw = yaml.safe_load(path.read_text("utf-8")) or {}
    except OSError as exc:
        raise StartupError(f"{where}: cannot read the file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise StartupError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise StartupError(f"{where}: expected a mapping of ServerConfig fields")
    ignored = [key for key in _KERNEL_OWNED if key in raw]
    if ignored:
        log.info("%s: %s belong to the kernel here (use its options); ignored", where, ", ".join(ignored))
    mapping = {
        "base_path": "base_path", "processor": "processor", "auth_enabled": "auth",
        "auth_username": "auth_user", "auth_password": "auth_password",
        "token_expiry_seconds": "token_expiry",
    }
    updates: dict[str, Any] = {ours: raw[theirs] for theirs, ours in mapping.items() if theirs in raw}
    detailed = None
    if "models" in raw:
        models = raw["models"]
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise StartupError(f"{where}: models must be a list of names")
        updates["models"] = models
    detector = raw.get("detector_config")
    if isinstance(detector, dict):
        for key in ("pattern", "frame_strategy"):
            if key in detector:
                updates[key] = detector[key]
        if isinstance(detector.get("pattern"), str):
            _check_pattern(detector["pattern"], f"{where}: detector_config.pattern")
        if detector.get("models"):
            detailed = [_yaml_model(m, where) for m in detector["models"] if m.get("enabled", True)]
    try:
        merged = msgspec.structs.asdict(config) | updates
        return msgspec.convert(merged, DetectConfig), detailed
    except msgspec.ValidationError as exc:
        raise StartupError(f"{where}: {exc}") from None


def _yaml_model(item: Any, where: str) -> ModelEntry:
    """A `detector_config.models` item (pyzm's ModelConfig fields we use)."""
    if not isinstance(item, dict) or not (item.get("name") or item.get("weights")):
        raise StartupError(f"{where}: each detector_config model needs a name or weights")
    if item.get("type", "object") != "object":
        raise StartupError(f"{where}: model {item.get('name')!r}: only type 'object' is served")
    options = item.get("options") or {}
    try:
        return msgspec.convert({
            "published": item.get("name") or "",
            "spec": item.get("weights") or item.get("name"),
            "weights": item.get("weights"),
            "config": item.get("config"),
            "labels": item.get("labels"),
            "processor": item.get("processor"),
            "min_confidence": item.get("min_confidence"),
            "model_width": item.get("model_width"),
            "model_height": item.get("model_height"),
            "decoder": item.get("decoder") or options.get("decoder"),
        }, ModelEntry)
    except msgspec.ValidationError as exc:
        raise StartupError(f"{where}: model {item.get('name')!r}: {exc}") from None


def registry_name(published: str) -> str:
    """A registry-safe name ([A-Za-z0-9_.-]+) for a published name such as `YOLOv11 ONNX`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", published).strip("_") or "model"
