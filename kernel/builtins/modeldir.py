"""The kernel's own model source: `--model-dir` repositories, so any plugin can serve
models with no other plugin loaded.

Layouts, under each directory given:
- `<name>/<version>/model.<ext>` (Triton's repository; versions are numbers);
- `<name>/model.<ext>` or `<name>/<name>.<ext>` (version 1);
- `<name>.<ext>` directly in the directory.
Extensions: `.onnx`, `.tflite`, `.weights` (Darknet; needs `<stem>.cfg`, or the only
`.cfg` beside it), and `.<format>` for any other format an installed backend reads. Labels come from `labels.txt` in a model folder or `<stem>.names`,
`.txt`, `.labels` beside a file, one per line. An optional `config.toml` in a model folder
(or `<stem>.toml` beside a file) sets `backend`, `processor`, `labels` (a file name) and
anything else a backend or plugin reads (`params`). Models register as `dir.<name>`.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

from kernel.backends import PROCESSORS
from kernel.hookimpl import hookimpl
from kernel.registry import ModelSource, ModelSpec, file_revision

log = logging.getLogger("kernel.modeldir")

FORMATS = {".onnx": "onnx", ".tflite": "tflite", ".weights": "darknet"}
LABEL_SUFFIXES = (".names", ".txt", ".labels")


class ModelDirSource(ModelSource):
    name = "dir"

    def __init__(self, dirs: list[str], formats: dict[str, str] | None = None) -> None:
        self.dirs = [Path(d).expanduser() for d in dirs]
        #: file suffix -> model format
        self.formats = formats or FORMATS

    def scan(self) -> list[ModelSpec]:
        specs: dict[str, list[ModelSpec]] = {}
        for root in self.dirs:
            if not root.is_dir():
                log.warning("model directory %s does not exist", root)
                continue
            try:
                entries = sorted(root.iterdir())
            except OSError as exc:
                log.warning("model directory %s cannot be read: %s", root, exc)
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    found = self._folder(entry) if entry.is_dir() else self._file(entry)
                except (OSError, RuntimeError) as exc:  # one unreadable model must not hide the others
                    # (RuntimeError: Path.resolve on a symlink loop before Python 3.13)
                    log.warning("model %s skipped: %s", entry, exc)
                    continue
                if not found:
                    continue
                if found[0].name in specs:
                    log.warning("model %r in %s is shadowed by an earlier model directory", found[0].name, root)
                    continue
                specs[found[0].name] = found
        return [spec for versions in specs.values() for spec in versions]

    def _folder(self, folder: Path) -> list[ModelSpec]:
        name = folder.name
        versions = sorted((d for d in folder.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name))
        if versions:
            return [spec for d in versions if (spec := self._in(d, name, d.name, folder))]
        spec = self._in(folder, name, "1", folder)
        return [spec] if spec else []

    def _in(self, folder: Path, name: str, version: str, config_dir: Path) -> ModelSpec | None:
        files = [f for f in sorted(folder.iterdir()) if f.suffix.lower() in self.formats and f.is_file()]
        preferred = [f for f in files if f.stem in ("model", name)]
        if preferred or len(files) == 1:
            model = (preferred or files)[0]
            labels = folder / "labels.txt" if (folder / "labels.txt").is_file() else _labels_beside(model)
            if labels is None and (config_dir / "labels.txt").is_file():
                labels = config_dir / "labels.txt"
            return self._spec(name, version, model, labels, config_dir / "config.toml")
        if files:
            log.warning("model folder %s holds several model files and none is model.<ext>; skipped", folder)
        return None

    def _file(self, path: Path) -> list[ModelSpec]:
        if path.suffix.lower() not in self.formats:
            return []
        spec = self._spec(path.stem, "1", path, _labels_beside(path), path.with_suffix(".toml"))
        return [spec] if spec else []

    def _spec(self, name: str, version: str, model: Path, labels: Path | None, config: Path) -> ModelSpec | None:
        settings: dict[str, Any] = {}
        if config.is_file():
            try:
                settings = tomllib.loads(config.read_text("utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                log.warning("model %r skipped: %s is not valid TOML: %s", name, config, exc)
                return None
        processor = settings.pop("processor", "cpu")
        if processor not in PROCESSORS:
            log.warning("model %r skipped: %s: processor must be one of %s", name, config, ", ".join(PROCESSORS))
            return None
        if "labels" in settings:
            labels = config.parent / str(settings.pop("labels"))
        fmt = self.formats[model.suffix.lower()]
        files: dict[str, str] = {}
        if fmt == "darknet":
            cfg = _darknet_cfg(model)
            if cfg is None:
                log.warning("model %r skipped: no .cfg for %s", name, model)
                return None
            files["cfg"] = str(cfg)
        return ModelSpec(
            name=name,
            qualified=f"{self.name}.{name}",
            source=self.name,
            path=str(model.resolve()),
            format=fmt,
            files=files,
            version=version,
            labels=_read_labels(labels) if labels else None,
            backend=settings.pop("backend", None),
            processor=processor,
            params=settings,
            revision=file_revision(model, *files.values()),
        )


def _labels_beside(model: Path) -> Path | None:
    for suffix in LABEL_SUFFIXES:
        candidate = model.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def _darknet_cfg(weights: Path) -> Path | None:
    beside = weights.with_suffix(".cfg")
    if beside.is_file():
        return beside
    cfgs = sorted(weights.parent.glob("*.cfg"))
    return cfgs[0] if len(cfgs) == 1 else None


def _read_labels(path: Path) -> tuple[str, ...] | None:
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("labels file %s cannot be read: %s", path, exc)
        return None
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@hookimpl
def kernel_model_sources(kernel: Any) -> list[ModelSource]:
    dirs = kernel.config.kernel.model_dir
    if not dirs:
        return []
    formats = {f".{f}": f for backend in kernel.backends.values() for f in backend.formats}
    return [ModelDirSource(dirs, {**formats, **FORMATS})]
