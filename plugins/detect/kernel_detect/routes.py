"""pyzm.serve's routes: /login, /health, /models, /infer (what the released client calls)
and the documented /detect and /detect_urls (zones, pattern and frame strategy applied here).

Errors keep pyzm's `{"detail": ...}` shape and its messages where it has them; /infer
reports a failed fetch, an unknown model or a failed inference in a 200 body's `error`,
as pyzm does, because its client reads that and skips the model.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import math
from collections import deque
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Request, Router, get, post
from litestar.datastructures import UploadFile

import kernel
from kernel import BadRequest, KernelError, Unauthorized
from kernel_detect.config import FRAME_STRATEGIES, DetectConfig
from kernel_detect.fetch import FetchError, redact, with_auth
from kernel_detect.filters import Budget, FrameResult, apply_filters, best_frame, parse_zones, request_pattern
from kernel_detect.service import DetectService, ModelFailed, Served

log = logging.getLogger("kernel.detect")
T = TypeVar("T")


class Unprocessable(KernelError):
    """A request field is missing or of the wrong kind (FastAPI's 422, which pyzm answers)."""

    status_code = 422


class BadGateway(KernelError):
    """No frame of a /detect_urls request could be fetched."""

    status_code = 502


class ClientGone(KernelError):
    """The client closed the connection before its answer (nginx's 499; nobody reads it)."""

    status_code = 499


def service(request: Request) -> DetectService:
    from kernel_detect.plugin import service_of

    return service_of(request.app.state["kernel"])


# -- login, health, models ---------------------------------------------------------------


async def login(request: Request) -> dict[str, Any]:
    svc = service(request)
    config = svc.settings.config
    if request.content_type[0] != "application/json":
        raise Unprocessable("the body must be JSON: {\"username\": ..., \"password\": ...}")
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        raise Unprocessable("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Unprocessable("the body must be a JSON object with username and password")
    username, password = str(body.get("username") or ""), str(body.get("password") or "")
    if config.auth:
        user_ok = hmac.compare_digest(username.encode(), config.auth_user.encode())
        password_ok = hmac.compare_digest(password.encode(), config.auth_password.encode())
        if not (user_ok and password_ok):
            raise Unauthorized("Invalid credentials")
    token = svc.kernel.auth.tokens.issue(username, ["detect"], config.token_expiry, issuer="detect")
    return {"access_token": token, "expires": config.token_expiry}


async def health(request: Request) -> dict[str, Any]:
    return {"status": "ok", "models_loaded": service(request).kernel.started}


async def models(request: Request) -> dict[str, Any]:
    out = []
    for served in service(request).served():
        spec = served.model.spec
        out.append({
            "name": served.name,
            "type": "object",
            "framework": served.model.choice.backend or "none",
            "loaded": served.model.state == "ready",
            "processor": spec.processor,
            "requested_processor": spec.processor,
        })
    return {"models": out}


# -- /infer: what the released client calls ----------------------------------------------


async def infer(request: Request) -> dict[str, Any]:
    svc = service(request)
    form = await request.form()
    type_ = _text(form, "type", required=True)
    name = _text(form, "name")
    url = _text(form, "url")
    min_confidence = _confidence(_text(form, "min_confidence"))
    if url:
        full = with_auth(url, _text(form, "zm_auth"))
        verify = _text(form, "verify_ssl", "1") not in ("0", "false", "False", "")
        try:
            frame = await svc.fetch_frame(full, verify)
        except FetchError as exc:
            # The client's URL or its portal failed, not this server: a warning, as /detect_urls logs it.
            log.warning("URL-mode fetch of %s failed: %s", redact(full), exc)
            return {"detections": [], "error": f"fetch failed: {exc}"}
    else:
        upload = form.get("image")
        data = await upload.read() if isinstance(upload, UploadFile) else b""
        frame = await svc.decode(data)
    served = svc.pick(type_, name)
    if served is None:
        return {"detections": [], "error": f"no model loaded for type={type_} name={name!r}"}
    try:
        with svc.frame_memory.hold(frame):
            found = await svc.run(served, frame, min_confidence)
    except (ModelFailed, BadRequest) as exc:
        return {"detections": [], "error": exc.detail}
    return {
        "detections": [
            {"label": d.label, "confidence": d.confidence, "box": list(d.box), "type": d.type, "model_name": d.model_name}
            for d in found
        ],
        "error": None,
    }


# -- the documented /detect and /detect_urls ---------------------------------------------


class FrameURL(msgspec.Struct):
    url: str
    frame_id: Annotated[str, msgspec.Meta(max_length=256)] | int | None = None


class DetectURLs(msgspec.Struct):
    urls: list[FrameURL]
    zm_auth: str = ""
    #: Left as text for `parse_zones`, which checks its size before parsing it.
    zones: msgspec.Raw = msgspec.Raw()
    verify_ssl: bool = True
    pattern: str | None = None
    frame_strategy: str | None = None
    models: list[str] | None = None
    min_confidence: float | None = None


async def detect(request: Request) -> dict[str, Any]:
    svc = service(request)
    form = await request.form()
    uploads = [f for f in form.getall("file", []) if isinstance(f, UploadFile)] if "file" in form else []
    if not uploads:
        raise Unprocessable("file: field required (an image upload)")
    _check_frames(len(uploads), svc.settings.config)
    zones = await _zones(svc, _text(form, "zones"))
    options = _Options(svc, _text(form, "pattern"), _text(form, "frame_strategy"),
                       _names(_text(form, "models")), _confidence(_text(form, "min_confidence")))
    ids = ["single"] if len(uploads) == 1 else [str(i + 1) for i in range(len(uploads))]

    async def work() -> dict[str, Any]:
        results: list[FrameResult] = []
        for frame_id, upload in zip(ids, uploads):
            # Decoded, run and dropped one at a time: a small PNG can decode to 150 MB.
            result = await options.run(frame_id, await svc.decode(await upload.read()), zones)
            results.append(result)
            if options.strategy in ("first", "first_new") and result.detections:
                break
        return best_frame(results, options.strategy).as_dict()

    return await _while_connected(request, work())


async def detect_urls(request: Request) -> dict[str, Any]:
    svc = service(request)
    config = svc.settings.config
    if request.content_type[0] != "application/json":
        raise Unprocessable("the body must be JSON with urls")
    try:
        body = msgspec.json.decode(await request.body(), type=DetectURLs)
    except msgspec.ValidationError as exc:
        raise Unprocessable(f"invalid body: {exc}") from None
    except msgspec.DecodeError:
        raise BadRequest("the body is not valid JSON") from None
    if not body.urls:
        raise Unprocessable("urls must name at least one frame")
    _check_frames(len(body.urls), config)
    zones = await _zones(svc, bytes(body.zones))
    options = _Options(svc, body.pattern, body.frame_strategy, body.models, _confidence(body.min_confidence))
    frames = [(str(item.frame_id if item.frame_id is not None else i + 1), with_auth(item.url, body.zm_auth))
              for i, item in enumerate(body.urls)]
    for frame_id, url in frames:
        try:
            svc.fetcher.check(url)
        except FetchError as exc:
            raise BadRequest(f"frame {frame_id!r}: {exc}") from None

    async def work() -> dict[str, Any]:
        # Fetches start as frames are taken, at most `fetch_parallel` ahead, and bring
        # bytes: a frame is decoded only when its turn comes.
        ahead: deque[asyncio.Task[bytes]] = deque()
        waiting = iter(frames)
        results: list[FrameResult] = []
        failures: dict[str, str] = {}
        try:
            for frame_id, url in frames:
                for _, later in itertools.islice(waiting, config.fetch_parallel - len(ahead)):
                    ahead.append(asyncio.ensure_future(svc.fetcher.fetch(later, body.verify_ssl)))
                fetch = ahead.popleft()
                try:
                    frame = await svc.fetched_frame(await fetch)
                except FetchError as exc:
                    log.warning("frame %s: fetch of %s failed: %s", frame_id, redact(url), exc)
                    failures[frame_id] = f"fetch failed: {exc}"
                    continue
                result = await options.run(frame_id, frame, zones)
                del frame  # before the next frame is decoded
                results.append(result)
                if options.strategy in ("first", "first_new") and result.detections:
                    break
        finally:
            for task in ahead:
                task.cancel()
            await asyncio.gather(*ahead, return_exceptions=True)
        if not results:
            detail = "; ".join(f"{k}: {v}" for k, v in failures.items())
            raise BadGateway(f"no frame could be fetched ({detail})")
        answer = best_frame(results, options.strategy).as_dict()
        if failures:
            answer["frame_errors"] = failures
        return answer

    return await _while_connected(request, work())


def _check_frames(count: int, config: DetectConfig) -> None:
    if count > config.max_frames:
        raise BadRequest(f"at most {config.max_frames} frames per request (--detect-max-frames); {count} given")


async def _zones(svc: DetectService, text: str | bytes) -> list:
    config = svc.settings.config
    return await svc.kernel.pool.offload(parse_zones, text, config.max_zones, config.max_zone_points)


async def _while_connected(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result; when the client hangs up first, `work` is cancelled (its fetches and
    frames with it), since nobody would read the answer."""
    task = asyncio.ensure_future(work)

    async def hangup() -> None:
        # Once the body is read, the server's next message is the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(hangup())
    try:
        await asyncio.wait([task, watcher], return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        log.info("%s: the client left; its work was stopped", request.url.path)
        raise ClientGone("the client closed the connection")
    try:
        return task.result()
    finally:
        # A failure's traceback holds this frame, and the task holds the failure: without
        # this the cycle would keep the work's frames (and its decoded image) until the
        # garbage collector runs.
        del task


class _Options:
    """What one /detect or /detect_urls request asks for, checked."""

    def __init__(self, svc: DetectService, pattern: str | None, strategy: str | None,
                 names: list[str] | None, min_confidence: float | None) -> None:
        config = svc.settings.config
        self.svc = svc
        # Named for the 400 of a pattern that does not compile or match in time.
        self.pattern_name = "pattern" if pattern else "--detect-pattern"
        self.pattern = request_pattern(pattern or config.pattern, self.pattern_name)
        self.budget = Budget(config.pattern_timeout)
        self.strategy = strategy or config.frame_strategy
        if self.strategy not in FRAME_STRATEGIES:
            raise BadRequest(f"frame_strategy must be one of {', '.join(FRAME_STRATEGIES)}")
        self.min_confidence = min_confidence
        self.named = bool(names)
        self.models: list[Served] = [svc.find(n) for n in names] if names else svc.default_models()
        if not self.models:
            raise kernel.NotFound("no detection models are served")

    async def run(self, frame_id: str, frame: Any, zones: list) -> FrameResult:
        """Every model on `frame`, held against --detect-frame-memory meanwhile."""
        found = []
        with self.svc.frame_memory.hold(frame):
            for served in self.models:
                try:
                    found += await self.svc.run(served, frame, self.min_confidence)
                except BadRequest:
                    # Among models chosen by default, one that is not a detector is skipped.
                    if self.named:
                        raise
        kept, rejected = await self.svc.kernel.pool.offload(
            apply_filters, found, self.pattern, self.pattern_name, zones, self.budget)
        return FrameResult(frame_id, kept, rejected, (int(frame.shape[0]), int(frame.shape[1])))


def _text(form: Any, key: str, default: str = "", required: bool = False) -> str:
    value = form.get(key)
    if value is None:
        if required:
            raise Unprocessable(f"{key}: field required")
        return default
    if not isinstance(value, str):
        raise Unprocessable(f"{key}: expected a text field")
    return value


def _confidence(value: str | float | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise Unprocessable("min_confidence: expected a number") from None
    if not (0 <= number <= 1) or math.isnan(number):
        raise Unprocessable("min_confidence: expected a number between 0 and 1")
    return number


def _names(value: str) -> list[str] | None:
    return [n.strip() for n in value.split(",") if n.strip()] or None


def router(config: DetectConfig) -> Router:
    """Every route under the configured prefix; inference routes guarded when auth is on."""
    guards = [kernel.requires("detect")] if config.auth else []
    limit = config.max_upload_bytes
    handlers = [
        post("/login", status_code=200)(login),
        get("/health")(health),
        get("/models")(models),
        post("/infer", status_code=200, guards=guards, request_max_body_size=limit)(infer),
        post("/detect", status_code=200, guards=guards, request_max_body_size=limit)(detect),
        post("/detect_urls", status_code=200, guards=guards, request_max_body_size=limit)(detect_urls),
    ]
    return Router(
        path="/" + config.prefix.strip("/"),
        route_handlers=handlers,
        exception_handlers=kernel.error_handlers(kernel.detail_shape),
    )
