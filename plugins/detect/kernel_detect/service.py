"""The detector behind the routes: which models detect serves, and running them on frames.

Models are registry models. Detect's own (source `detect`) answer to their published
names; any other registry model (a `--model-dir` model, a zoo upload) answers to its
registry name, and is detectable when a decoder fits its outputs. Inference goes through
`registry.infer` (the kernel's bounded thread pool); image preparation and decoding run on
the pool's helper threads (`pool.offload`, at inference's priority, `--infer-nice`), so the
event loop only routes requests and stays quick while frames are worked on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np

from kernel import BadRequest, Conflict, Kernel, KernelError, Model, ModelError, NotFound, Unavailable
from kernel_detect import decoders
from kernel_detect.config import Settings
from kernel_detect.decoders import NoDecoder
from kernel_detect.discovery import SOURCE, DetectSource
from kernel_detect.fetch import Fetcher, FetchError
from kernel_detect.filters import Found
from kernel_detect.imaging import decode_image, limit_pixels, prepare

log = logging.getLogger("kernel.detect")

#: /infer's URL mode keeps this many decoded frames, and at most this many bytes of them
#: (a 47 kB PNG can decode to 150 MB; a 1080p frame is 6 MB).
FRAME_CACHE = 8
FRAME_CACHE_BYTES = 64 * 1024 * 1024
READY = "ready"


class Profile(NamedTuple):
    """How to feed a loaded model and read its outputs."""

    input: str
    layout: str
    width: int
    height: int
    dtype: np.dtype
    decoder: str
    outputs: list[str]
    labels: tuple[str, ...] | None


class Served(NamedTuple):
    """A model as detect shows and runs it."""

    name: str
    model: Model

    @property
    def min_confidence(self) -> float | None:
        return self.model.spec.params.get("min_confidence")


class ModelFailed(KernelError):
    """A model could not run; the message is safe for clients (no paths, no traces)."""

    status_code = 500


class FrameMemory:
    """Bytes of decoded frames that requests hold while their models run. A frame past the
    budget is dropped at once and its request answered 503, so many concurrent requests
    with large images cannot exhaust memory while they wait for inference (frames being
    decoded add what one decode takes per helper thread). A frame several requests share (/infer's
    URL cache) counts once. Used on the event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        #: Requests holding each frame, by the frame's id (alive, so unique, while held).
        self._holders: dict[int, int] = {}

    @contextmanager
    def hold(self, frame: np.ndarray) -> Iterator[np.ndarray]:
        key, size = id(frame), frame.nbytes
        if key not in self._holders:
            # One frame is always let in: the pixel limit bounds it, and a budget smaller
            # than one large frame would otherwise refuse it for ever.
            if self.held and self.held + size > self.limit:
                raise Unavailable(f"too many frames are being worked on ({self.held // 2**20} MiB of "
                                  f"--detect-frame-memory {self.limit // 2**20} MiB); retry later")
            self.held += size
        self._holders[key] = self._holders.get(key, 0) + 1
        try:
            yield frame
        finally:
            self._holders[key] -= 1
            if not self._holders[key]:
                del self._holders[key]
                self.held -= size


class DetectService:
    def __init__(self, kernel: Kernel, settings: Settings) -> None:
        self.kernel = kernel
        self.settings = settings
        self.source = DetectSource(settings)
        config = settings.config
        # Before anything imports cv2, which reads the limit then.
        limit_pixels(config.max_pixels)
        self.fetcher = Fetcher(config.fetch_timeout, config.fetch_max_bytes, config.fetch_max_redirects, config.fetch_allow)
        self._profiles: dict[tuple[str, str], Profile] = {}
        self._frames: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self.frame_memory = FrameMemory(config.frame_memory)
        kernel.registry.subscribe(self._forget)

    def _forget(self, event: str, model: Model) -> None:
        if event in ("unloaded", "removed", "loaded", "failed"):
            self._profiles.pop((model.name, model.spec.version), None)

    # -- which models ------------------------------------------------------------------

    def own(self) -> list[Served]:
        """Detect's own models, as published, in the configured order: pyzm.serve lists
        them so and gives an unnamed request the first."""
        order = self.source.order
        mine = [m for m in self.kernel.registry.models() if m.spec.source == SOURCE]
        # One the last scan no longer offers (its removal pending) sorts last.
        mine.sort(key=lambda m: order.get(m.name, len(order)))
        return [Served(m.spec.params.get("published", m.spec.name), m) for m in mine]

    def others(self) -> list[Served]:
        """Other sources' models that a backend can run, by the name users type for them."""
        names: dict[str, str] = {}
        for name, qualified in self.kernel.registry.names().items():
            # Prefer the plain name where it is unique.
            if qualified not in names or len(name) < len(names[qualified]):
                names[qualified] = name
        return [Served(names.get(m.name, m.name), m) for m in self.kernel.registry.models()
                if m.spec.source != SOURCE and m.choice.backend is not None]

    def served(self) -> list[Served]:
        return self.own() + self.others()

    def default_models(self) -> list[Served]:
        """What /detect runs when no model is named: detect's own models, or else every
        other runnable model (so `--model-dir` alone gives a working detector)."""
        return self.own() or self.others()

    def find(self, name: str) -> Served:
        """A model by published name, else by registry name; NotFound or Conflict."""
        for served in self.own():
            if served.name == name:
                return served
        model = self.kernel.registry.get(name)
        if model.choice.backend is None:
            raise NotFound(f"model {name!r} cannot be run here: {model.choice.reason}")
        return Served(name, model)

    def pick(self, type_: str, name: str) -> Served | None:
        """pyzm's model choice for /infer: a named model exactly, or the first of the type."""
        if type_ != "object":
            return None
        if name:
            try:
                return self.find(name)
            except (NotFound, Conflict):
                return None
        models = self.default_models()
        return models[0] if models else None

    # -- running -----------------------------------------------------------------------

    async def profile(self, served: Served) -> Profile:
        model = served.model
        key = (model.name, model.spec.version)
        cached = self._profiles.get(key)
        if cached is not None and model.state == READY:
            return cached
        try:
            await self.kernel.registry.load(model.name, model.spec.version)
        except KernelError as exc:
            log.error("detect model %s could not load: %s", model.name, exc.detail)
            raise ModelFailed(f"model {served.name!r} failed to load") from None
        session = model.session
        if session is None:
            raise ModelFailed(f"model {served.name!r} was unloaded; retry")
        try:
            profile = await asyncio.to_thread(_profile, model.spec, session.inputs, session.outputs)
        except NoDecoder as exc:
            raise BadRequest(f"model {served.name!r} is not a detector this server can decode: {exc}") from None
        self._profiles[key] = profile
        return profile

    async def run(self, served: Served, frame: np.ndarray, min_confidence: float | None = None) -> list[Found]:
        """One model on one frame: detections above the threshold, in frame pixels."""
        profile = await self.profile(served)
        letterbox = profile.decoder != "ssd"
        blob, geometry = await self.kernel.pool.offload(
            prepare, frame, profile.width, profile.height, profile.layout, profile.dtype, letterbox,
        )
        try:
            outputs = await self.kernel.registry.infer(served.model.name, {profile.input: blob}, served.model.spec.version)
        except (BadRequest, ModelError) as exc:
            log.error("detect model %s failed to run: %s", served.model.name, exc.detail)
            raise ModelFailed(f"model {served.name!r} failed to run") from None
        threshold = min_confidence
        if threshold is None:
            threshold = served.min_confidence if served.min_confidence is not None else self.settings.config.min_confidence
        arrays = [outputs[name] for name in profile.outputs]
        found = await self.kernel.pool.offload(decoders.decode, profile.decoder, arrays, geometry, threshold, profile.labels)
        return [Found(d.label, d.confidence, d.box, served.name) for d in found]

    async def decode(self, data: bytes) -> np.ndarray:
        return await self.kernel.pool.offload(decode_image, data)

    async def fetch_frame(self, url: str, verify: bool) -> np.ndarray:
        """/infer's URL mode: a decoded frame fetched from `url` (with credentials already in
        it); the last few are kept, as pyzm does, since a client runs several models per frame."""
        key = (url, str(verify))
        if key in self._frames:
            self._frames.move_to_end(key)
            return self._frames[key]
        frame = await self.fetched_frame(await self.fetcher.fetch(url, verify))
        if frame.nbytes <= FRAME_CACHE_BYTES:
            self._frames[key] = frame
            while len(self._frames) > FRAME_CACHE or sum(f.nbytes for f in self._frames.values()) > FRAME_CACHE_BYTES:
                self._frames.popitem(last=False)
        return frame

    async def fetched_frame(self, data: bytes) -> np.ndarray:
        """Fetched bytes decoded; a `FetchError` when they are not an image."""
        try:
            return await self.decode(data)
        except BadRequest:
            raise FetchError("the fetched frame is not an image") from None


def _profile(spec: Any, inputs: list, outputs: list) -> Profile:
    """Work out input layout and size, labels and decoder for a loaded model."""
    if len(inputs) != 1:
        raise NoDecoder(f"the model takes {len(inputs)} inputs; a detector takes one image")
    info = inputs[0]
    shape = info.shape
    if len(shape) != 4:
        raise NoDecoder(f"input {info.name} {list(shape)} is not an image batch")
    layout = "NHWC" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "NCHW"
    h_dim, w_dim = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    params = spec.params
    default = 416 if spec.format == "darknet" else 640
    width = params.get("model_width") or (w_dim if w_dim > 0 else default)
    height = params.get("model_height") or (h_dim if h_dim > 0 else default)
    labels, end2end = spec.labels, False
    if spec.format == "onnx":
        meta_labels, end2end = _onnx_metadata(spec.path)
        if not labels:
            labels = meta_labels
    decoder = params.get("decoder") or decoders.choose(outputs, labels, spec.format, end2end)
    if decoder not in decoders.DECODERS:
        raise NoDecoder(f"unknown decoder {decoder!r}; one of {', '.join(decoders.DECODERS)}")
    dtype = info.dtype if info.datatype in ("FP32", "FP16", "UINT8") else np.dtype(np.float32)
    return Profile(info.name, layout, int(width), int(height), dtype, decoder, [o.name for o in outputs], labels)


def _onnx_metadata(path: str) -> tuple[tuple[str, ...] | None, bool]:
    """Class names (metadata `names`, a dict literal) and the `end2end` flag of an ONNX file."""
    import ast

    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 (a file the backend loaded but onnx cannot parse: no metadata)
        log.warning("cannot read ONNX metadata of %s: %s", spec_name(path), type(exc).__name__)
        return None, False
    meta = {p.key: p.value for p in model.metadata_props}
    labels = None
    if "names" in meta:
        try:
            names = ast.literal_eval(meta["names"])
            if isinstance(names, dict):
                ordered = [""] * (max(int(k) for k in names) + 1)
                for k, v in names.items():
                    ordered[int(k)] = str(v)
                labels = tuple(ordered)
            elif isinstance(names, (list, tuple)):
                labels = tuple(map(str, names))
        except (ValueError, SyntaxError, TypeError):
            log.warning("ONNX metadata 'names' of %s is not a dict literal", spec_name(path))
    return labels, meta.get("end2end", "").lower() == "true"


def spec_name(path: str) -> str:
    """A file's name without its directories, for logs that must not reveal paths."""
    return path.rsplit("/", 1)[-1]
