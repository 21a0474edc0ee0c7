"""/detect and /detect_urls (zones, pattern, frame strategies), /models, /login, auth
failures, and bad input, against `kernel serve --plugins detect` on loopback."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kernel import TokenIssuer
from tests.conftest import Server
from tests.detect.detect_support import FrameServer, frames, models_folder
from tests.realmodels import yolov3_tiny

SECRET = secrets.token_urlsafe(48)  # may begin with "-": passed as --token-secret=...
PASSWORD = "pw-" + secrets.token_hex(6)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("detect-routes")


#: The routes server's --detect-max-pixels; the test frames have fewer.
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def images(home: Path) -> dict[str, bytes]:
    import cv2
    import numpy as np

    out = frames(home)
    out["large"] = cv2.imencode(".png", np.zeros((1000, MAX_PIXELS // 1000 + 1, 3), np.uint8))[1].tobytes()
    return out


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[Server]:
    base = models_folder(home / "models")
    (base / "broken").mkdir()
    (base / "broken" / "broken.onnx").write_bytes(b"not a model at all")
    # The same Darknet model through another source, converted to a YOLOv5-layout ONNX.
    extra = home / "dir" / "tiny-onnx"
    extra.mkdir(parents=True)
    darknet = yolov3_tiny()
    for src, name in ((darknet.weights, "model.weights"), (darknet.cfg, "model.cfg"), (darknet.names, "labels.txt")):
        (extra / name).write_bytes(Path(src).read_bytes())
    (extra / "config.toml").write_text('backend = "onnxruntime"\n')
    srv = Server([
        "--plugins", "detect", "--base-path", str(base), "--model-dir", str(home / "dir"),
        "--auth", "--auth-user", "admin", "--auth-password", PASSWORD, f"--token-secret={SECRET}",
        "--detect-fetch-timeout", "0.5", "--detect-max-upload-bytes", str(5 * 1024 * 1024),
        "--detect-prefix", "/pyzm", "--detect-max-pixels", str(MAX_PIXELS),
    ], home / "home")
    yield srv.wait_ready()
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    token = httpx.post(server.url + "/pyzm/login", json={"username": "admin", "password": PASSWORD}).json()["access_token"]
    with httpx.Client(base_url=server.url + "/pyzm", headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        yield c


def detect(client: httpx.Client, image: bytes, **fields: str) -> httpx.Response:
    return client.post("/detect", files={"file": ("frame.jpg", image)}, data={"models": "yolov3-tiny", **fields})


# -- models, login, auth --------------------------------------------------------------


def test_models_show_loaded_truthfully(client: httpx.Client, images: dict[str, bytes]) -> None:
    before = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert {"yolov3-tiny", "320n", "broken", "tiny-onnx"} <= set(before)
    assert before["320n"]["loaded"] is False and before["320n"]["framework"] == "onnxruntime"
    detect(client, images["bus"], models="320n")
    after = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert after["320n"]["loaded"] is True
    assert client.get("/health").json() == {"status": "ok", "models_loaded": True}


def test_login_and_auth_failures(server: Server) -> None:
    url = server.url + "/pyzm"
    bad = httpx.post(url + "/login", json={"username": "admin", "password": "wrong"})
    assert bad.status_code == 401 and bad.json() == {"detail": "Invalid credentials"}
    assert httpx.post(url + "/login", data={"username": "admin", "password": PASSWORD}).status_code == 422
    good = httpx.post(url + "/login", json={"username": "admin", "password": PASSWORD}).json()
    assert good["expires"] == 3600 and good["access_token"]
    missing = httpx.post(url + "/detect")
    assert missing.status_code == 401 and missing.json() == {"detail": "Not authenticated"}
    assert missing.headers["www-authenticate"] == "Bearer"
    forged = httpx.post(url + "/detect", headers={"Authorization": "Bearer abc.def.ghi"})
    assert forged.status_code == 401 and forged.json() == {"detail": "Invalid token"}
    expired = TokenIssuer(SECRET).issue("admin", ["detect"], ttl=-60)
    old = httpx.post(url + "/detect", headers={"Authorization": f"Bearer {expired}"})
    assert old.status_code == 401 and old.json() == {"detail": "Token expired"}
    assert httpx.get(server.url + "/health").status_code == 404  # everything lives under the prefix


# -- detection, zones, pattern ----------------------------------------------------------


def test_detect_answers_a_detection_result(client: httpx.Client, images: dict[str, bytes]) -> None:
    body = detect(client, images["bus"]).json()
    assert set(body) == {"boxes", "labels", "confidences", "frame_id", "image_dimensions", "error_boxes",
                         "model_names", "detection_types", "polygons"}
    # What the plugin's README shows: four people and the bus, in order of confidence.
    assert body["labels"] == ["person"] * 4 + ["bus"]
    # within what another CPU's float arithmetic may move them
    assert body["confidences"] == pytest.approx([0.968, 0.661, 0.58, 0.37, 0.331], abs=0.01)
    expected = [[45, 401, 209, 888], [686, 468, 814, 892], [725, 534, 775, 825], [201, 427, 335, 804], [4, 222, 800, 748]]
    assert all(abs(a - b) <= 2 for box, want in zip(body["boxes"], expected, strict=True) for a, b in zip(box, want))
    assert body["frame_id"] == "single" and body["image_dimensions"]["original"] == [1080, 810]
    assert set(body["model_names"]) == {"yolov3-tiny"}


def test_zones_keep_boxes_inside_and_report_the_rest(client: httpx.Client, images: dict[str, bytes]) -> None:
    left = [{"name": "left", "value": [[0, 0], [250, 0], [250, 1080], [0, 1080]], "pattern": "person"}]
    body = detect(client, images["bus"], zones=json.dumps(left)).json()
    # The people touching x < 250 stay; the bus (pattern) and the people on the right go.
    assert body["boxes"] == [[45, 401, 209, 888], [201, 427, 335, 804]]
    assert [686, 468, 814, 892] in body["error_boxes"] and [4, 222, 800, 748] in body["error_boxes"]
    ignore = [{"name": "all", "points": [[0, 0], [810, 0], [810, 1080], [0, 1080]], "ignore_pattern": "bus"}]
    body = detect(client, images["bus"], zones=json.dumps(ignore)).json()
    assert "bus" not in body["labels"] and [4, 222, 800, 748] in body["error_boxes"]
    # A thin triangle touching only the left person's box.
    sliver = [{"name": "t", "value": "100,950 120,880 140,950"}]
    assert detect(client, images["bus"], zones=json.dumps(sliver)).json()["boxes"] == [[45, 401, 209, 888]]


def test_pattern_filters_labels(client: httpx.Client, images: dict[str, bytes]) -> None:
    body = detect(client, images["bus"], pattern="bus").json()
    assert body["labels"] == ["bus"] and body["error_boxes"] == []


def test_other_sources_models_are_detectable_with_the_yolov5_layout(client: httpx.Client, images: dict[str, bytes]) -> None:
    """A Darknet model converted to ONNX has an objectness column (YOLOv5 layout), which
    pyzm reads as a class score; read as objectness x class, it finds the same people."""
    body = detect(client, images["bus"], models="tiny-onnx").json()
    people = sorted((round(c, 2) for label, c in zip(body["labels"], body["confidences"]) if label == "person"), reverse=True)
    assert people[:3] == [0.97, 0.66, 0.58]


# -- /detect_urls and frame strategies --------------------------------------------------


def urls(client: httpx.Client, portal: FrameServer, fids: list[str], **extra: object) -> httpx.Response:
    body = {"urls": [{"frame_id": f, "url": portal.url(f)} for f in fids], "zm_auth": "token=zm-secret-1", **extra}
    return client.post("/detect_urls", json=body)


BOTH = ["yolov3-tiny", "320n"]


@pytest.mark.parametrize(("strategy", "best"), [
    ("first", "zidane"), ("first_new", "zidane"), ("most", "bus"), ("most_unique", "left"), ("most_models", "left"),
])
def test_frame_strategies(client: httpx.Client, portal: FrameServer, strategy: str, best: str) -> None:
    # person/umbrella/tie/bus from yolov3-tiny, FACE_FEMALE from 320n: blank has nothing;
    # zidane 4 (2 labels, 1 model); bus 5 (2 labels, 1 model); left 3 (3 labels, 2 models).
    body = urls(client, portal, ["blank", "zidane", "bus", "left"], models=BOTH,
                pattern="person|umbrella|tie|bus|FACE_FEMALE", frame_strategy=strategy).json()
    assert body["frame_id"] == best, body


@pytest.mark.parametrize(("strategy", "best"), [("most_unique", "zidane"), ("most_models", "left"), ("most", "zidane")])
def test_most_unique_and_most_models_differ(client: httpx.Client, portal: FrameServer, strategy: str, best: str) -> None:
    # left: person + FACE_FEMALE (2 labels, 2 models); zidane: 2 person + 2 tie (2 labels, 1 model, higher sum).
    body = urls(client, portal, ["left", "zidane"], models=BOTH, pattern="person|tie|FACE_FEMALE",
                frame_strategy=strategy).json()
    assert body["frame_id"] == best, body


def test_detect_urls_zones_and_failed_frames(client: httpx.Client, portal: FrameServer, server: Server) -> None:
    zone = [{"name": "left", "points": [[0, 0], [250, 0], [250, 1080], [0, 1080]]}]
    body = urls(client, portal, ["missing", "bus"], zones=zone, models=["yolov3-tiny"]).json()
    assert body["frame_id"] == "bus" and [686, 468, 814, 892] in body["error_boxes"]
    assert body["frame_errors"] == {"missing": "fetch failed: HTTP 404"}
    assert "zm-secret-1" not in server.output()


# -- bad input -----------------------------------------------------------------------------


def test_bad_uploads(client: httpx.Client) -> None:
    empty = client.post("/detect", files={"file": ("a.jpg", b"")})
    assert empty.status_code == 400 and empty.json() == {"detail": "Empty file"}
    junk = client.post("/detect", files={"file": ("a.jpg", b"GIF89a but not really")})
    assert junk.status_code == 400 and junk.json() == {"detail": "Could not decode image"}
    assert client.post("/infer", files={"image": ("a.png", b"")}, data={"type": "object"}).json() == {"detail": "Empty file"}
    assert client.post("/infer", files={"image": ("a.png", b"x")}).status_code == 422  # no type


def test_images_above_the_pixel_limit_are_not_decoded(client: httpx.Client, portal: FrameServer,
                                                      images: dict[str, bytes], server: Server) -> None:
    refused = detect(client, images["large"])
    assert refused.status_code == 400 and refused.json() == {"detail": "Could not decode image"}
    infer = client.post("/infer", data={"type": "object"}, files={"image": ("large.png", images["large"])})
    assert infer.status_code == 400 and infer.json() == {"detail": "Could not decode image"}
    fetched = client.post("/infer", data={"type": "object", "url": portal.url("large")})
    assert fetched.json() == {"detections": [], "error": "fetch failed: the fetched frame is not an image"}
    assert "refused to decode an image above --detect-max-pixels" in server.output()
    assert detect(client, images["bus"]).status_code == 200


def test_oversized_upload_is_refused(client: httpx.Client, server: Server) -> None:
    size = 200 * 1024 * 1024

    def body() -> Iterator[bytes]:
        chunk = b"\0" * (1024 * 1024)
        for _ in range(size // len(chunk)):
            yield chunk

    started = time.monotonic()
    try:
        response = client.post("/detect", content=body(), headers={
            "Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(size)})
        assert response.status_code == 413
    except httpx.HTTPError:
        pass  # the server may close the connection before the whole body is sent
    assert time.monotonic() - started < 30
    assert httpx.get(server.url + "/pyzm/health").status_code == 200


@pytest.mark.parametrize(("zones", "message"), [
    ("{not json", "zones is not valid JSON"),
    ('{"name": "a"}', "zones must be a JSON list of zones"),
    ('[{"name": "line", "value": [[0, 0], [5, 5]]}]', "zone 'line': points must be a polygon of at least 3 [x, y] points"),
    ('[{"name": "nan", "value": [[0, 0], [5, "x"], [1, 1]]}]', "zone 'nan': points must be a polygon of at least 3 [x, y] points"),
    ('[{"name": "z", "value": "0,0 9,0 9,9", "pattern": 5}]', "zone 'z': pattern must be a regular expression (text)"),
    ('[{"name": "z", "value": "0,0 9,0 9,9", "ignore_pattern": ["x"]}]',
     "zone 'z': ignore_pattern must be a regular expression (text)"),
    ('[{"name": "z", "value": "0,0 9,0 9,9", "pattern": "("}]',
     "zone 'z' pattern is not a valid regular expression: missing ), unterminated subpattern at position 0"),
])
def test_bad_zones(client: httpx.Client, images: dict[str, bytes], zones: str, message: str) -> None:
    response = detect(client, images["blank"], zones=zones)
    assert response.status_code == 400 and response.json() == {"detail": message}


def test_unknown_and_broken_models(client: httpx.Client, images: dict[str, bytes], server: Server) -> None:
    unknown = client.post("/infer", data={"type": "object", "name": "nope"}, files={"image": ("a.jpg", images["blank"])})
    assert unknown.status_code == 200 and unknown.json() == {"detections": [], "error": "no model loaded for type=object name='nope'"}
    # as pyzm: the image is decoded before the model is looked for
    undecoded = client.post("/infer", data={"type": "object", "name": "nope"}, files={"image": ("a.jpg", b"junk")})
    assert undecoded.status_code == 400 and undecoded.json() == {"detail": "Could not decode image"}
    assert detect(client, images["blank"], models="nope").status_code == 404
    broken = client.post("/infer", data={"type": "object", "name": "broken"}, files={"image": ("a.jpg", images["blank"])})
    assert broken.json() == {"detections": [], "error": "model 'broken' failed to load"}
    response = detect(client, images["blank"], models="broken")
    assert response.status_code == 500 and response.json() == {"detail": "model 'broken' failed to load"}
    assert "Traceback" not in response.text and "/" not in response.json()["detail"]


def test_urls_that_hang_loop_or_are_not_http(client: httpx.Client, portal: FrameServer, server: Server) -> None:
    started = time.monotonic()
    hung = client.post("/infer", data={"type": "object", "url": portal.url("slow"), "zm_auth": "token=zm-secret-2"})
    assert hung.json() == {"detections": [], "error": "fetch failed: no complete answer within 0.5s"}
    assert time.monotonic() - started < 2.5
    loop = urls(client, portal, ["loop"], models=["yolov3-tiny"])
    assert loop.status_code == 502 and "more than 3 redirects" in loop.json()["detail"]
    for url in ("file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://x"):
        refused = client.post("/detect_urls", json={"urls": [{"frame_id": "1", "url": url}]})
        assert refused.status_code == 400 and "only http and https" in refused.json()["detail"]
    assert client.post("/detect_urls", json={"urls": "nope"}).status_code == 422
    assert client.post("/detect_urls", content=b"{", headers={"Content-Type": "application/json"}).status_code == 400
    assert "zm-secret-2" not in server.output() and "Traceback" not in server.output()
    assert client.get("/health").status_code == 200


def test_urls_httpx_cannot_parse_are_failed_fetches(client: httpx.Client, server: Server) -> None:
    for url in ("http://exa\x00mple/x.png", "http://a\x7fb/x", "http://127.0.0.1:1/\x01"):
        answer = client.post("/infer", data={"type": "object", "url": url})
        assert answer.status_code == 200
        assert answer.json() == {"detections": [], "error": "fetch failed: the URL is not valid"}
        refused = client.post("/detect_urls", json={"urls": [{"frame_id": "1", "url": url}]})
        assert refused.status_code == 400 and refused.json() == {"detail": "frame '1': the URL is not valid"}
    assert "Traceback" not in server.output()
