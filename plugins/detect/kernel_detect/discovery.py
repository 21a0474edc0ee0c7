"""Models under `--detect-base-path`, found with pyzm's rules, as the registry source `detect`.

- `all`: every immediate subdirectory (sorted), every `.weights`, `.onnx`, `.tflite` file in
  it; the name is the file's stem; files directly in the base path are ignored.
- a named model: an absolute weights path; else `base/<name>/` and its first weights file;
  else the first file whose stem is `<name>` in any subdirectory.
- `.weights` is Darknet with the directory's first `.cfg`; labels for `.weights` and
  `.tflite` are the directory's first `.names`, then `.txt`, then `.labels` file; ONNX
  models carry theirs in metadata (read when the model first runs) unless one is given.

Each model registers as `detect.<name>`; its detect settings travel in `ModelSpec.params`.
The source remembers the order it found them in (the configured order, or discovery's),
which pyzm.serve lists and picks models in; the registry sorts by name.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kernel import ModelSource, ModelSpec, file_revision
from kernel_detect.config import ModelEntry, Settings, registry_name

log = logging.getLogger("kernel.detect")

SOURCE = "detect"
WEIGHT_SUFFIXES = {".weights": "darknet", ".onnx": "onnx", ".tflite": "tflite"}
LABEL_SUFFIXES = (".names", ".txt", ".labels")


class DetectSource(ModelSource):
    name = SOURCE

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: Qualified name -> position in the last scan. Kept out of the specs: a position
        #: that shifts (a model folder added under `all`) must not reload every model.
        self.order: dict[str, int] = {}

    def scan(self) -> list[ModelSpec]:
        base = Path(self.settings.config.base_path).expanduser()
        entries = self.settings.entries
        if entries is None:
            entries = [ModelEntry(published=w.stem, spec=str(w)) for w in discover(base)]
        specs: dict[str, ModelSpec] = {}
        for entry in entries:
            spec = self._spec(entry, base)
            if spec is None:
                continue
            if spec.qualified in specs:
                log.warning("detect model %r is listed twice; keeping the first", entry.published or entry.spec)
                continue
            specs[spec.qualified] = spec
        self.order = {qualified: i for i, qualified in enumerate(specs)}
        return list(specs.values())

    def _spec(self, entry: ModelEntry, base: Path) -> ModelSpec | None:
        weights = Path(entry.weights).expanduser() if entry.weights else resolve(entry.spec, base)
        if weights is None or not weights.is_file():
            log.warning("detect model %r matched no weights file under %s; not served", entry.spec, base)
            return None
        fmt = WEIGHT_SUFFIXES.get(weights.suffix.lower())
        if fmt is None:
            log.warning("detect model %r: %s is not a .weights, .onnx or .tflite file", entry.spec, weights.name)
            return None
        published = entry.published or weights.stem
        files: dict[str, str] = {}
        if fmt == "darknet":
            cfg = Path(entry.config) if entry.config else first_file(weights.parent, ".cfg")
            if cfg is None:
                log.warning("detect model %r: no .cfg beside %s; not served", published, weights.name)
                return None
            files["cfg"] = str(cfg)
        labels_path = Path(entry.labels) if entry.labels else None
        if labels_path is None and fmt != "onnx":
            labels_path = find_labels(weights.parent)
        processor = "tpu" if fmt == "tflite" else (entry.processor or self.settings.config.processor)
        params = {
            "published": published,
            "min_confidence": entry.min_confidence,
            "model_width": entry.model_width,
            "model_height": entry.model_height,
            "decoder": entry.decoder,
        }
        name = registry_name(published)
        return ModelSpec(
            name=name,
            qualified=f"{SOURCE}.{name}",
            source=SOURCE,
            path=str(weights.resolve()),
            format=fmt,
            files=files,
            labels=read_labels(labels_path) if labels_path else None,
            processor=processor,
            params={k: v for k, v in params.items() if v is not None},
            revision=file_revision(weights, *files.values()),
        )


def discover(base: Path) -> list[Path]:
    """`--models all`: weights files one level below `base`."""
    if not base.is_dir():
        log.info("detect base path %s does not exist; no models from it", base)
        return []
    return [
        f for d in sorted(base.iterdir()) if d.is_dir()
        for f in sorted(d.iterdir()) if f.is_file() and f.suffix.lower() in WEIGHT_SUFFIXES
    ]


def resolve(name: str, base: Path) -> Path | None:
    """pyzm's lookup of a model name: absolute path, directory match, then stem match."""
    path = Path(name)
    if path.is_absolute():
        return path if path.is_file() and path.suffix.lower() in WEIGHT_SUFFIXES else None
    folder = base / name
    if folder.is_dir():
        found = next((f for f in sorted(folder.iterdir()) if f.is_file() and f.suffix.lower() in WEIGHT_SUFFIXES), None)
        if found:
            return found
    if base.is_dir():
        for d in sorted(base.iterdir()):
            if d.is_dir():
                for f in sorted(d.iterdir()):
                    if f.is_file() and f.stem == name and f.suffix.lower() in WEIGHT_SUFFIXES:
                        return f
    return None


def first_file(folder: Path, suffix: str) -> Path | None:
    return next((f for f in sorted(folder.iterdir()) if f.is_file() and f.suffix == suffix), None)


def find_labels(folder: Path) -> Path | None:
    for suffix in LABEL_SUFFIXES:
        found = first_file(folder, suffix)
        if found:
            return found
    return None


def read_labels(path: Path) -> tuple[str, ...] | None:
    try:
        return tuple(line.strip() for line in path.read_text("utf-8").splitlines())
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("labels file %s cannot be read: %s", path.name, exc)
        return None
