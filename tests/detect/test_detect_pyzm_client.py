"""The real pyzm 2.5.6 client against `kernel serve --plugins detect`, and our boxes against
pyzm.serve's own on the same model and photo."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, free_port
from tests.detect.detect_support import FrameServer, PyzmServe, frames, models_folder, pyzm_python
from tests.realmodels import photo

PASSWORD = "s3cret-pass"

IMAGE_MODE = """
import json, sys
from pyzm import Detector
url, image, user, password = sys.argv[1:5]
kwargs = {"gateway_username": user, "gateway_password": password} if user else {}
detector = Detector(models=["yolov3-tiny"], gateway=url, **kwargs)
result = detector.detect(image)
print(json.dumps([[d.label, d.confidence, d.bbox.as_list(), d.model_name] for d in result.detections]))
"""

URL_MODE = """
import json, sys
from types import SimpleNamespace as NS
from pyzm import Detector
from pyzm.models.config import StreamConfig
url, portal, token = sys.argv[1:4]
# Just enough of pyzm's ZMClient for URL mode: the portal, the auth string, monitor size.
api = NS(portal_url=portal, auth=NS(get_auth_string=lambda: "token=" + token), config=NS(verify_ssl=False))
zm = NS(api=api, event=lambda eid: NS(monitor_id=1), monitor=lambda mid: NS(height=1080, width=810))
detector = Detector(models=["yolov3-tiny"], gateway=url)
result = detector.detect_event(zm, 7, stream_config=StreamConfig(frame_set=["blank", "bus"]))
print(json.dumps({"frame": result.frame_id, "labels": result.labels, "confidences": result.confidences}))
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("detect-client")


@pytest.fixture(scope="module")
def base(home: Path) -> Path:
    return models_folder(home / "models")


@pytest.fixture(scope="module")
def python() -> Path:
    return pyzm_python()


@pytest.fixture(scope="module")
def open_server(home: Path, base: Path) -> Iterator[Server]:
    server = Server(["--plugins", "detect", "--base-path", str(base), "--models", "all"], home / "open")
    yield server.wait_ready()
    server.stop()


@pytest.fixture(scope="module")
def auth_server(home: Path, base: Path) -> Iterator[Server]:
    server = Server([
        "--plugins", "detect", "--base-path", str(base), "--models", "yolov3-tiny",
        "--auth", "--auth-user", "zm", "--auth-password", PASSWORD,
        # `=`: a URL-safe secret may begin with "-", which would read as an option
        f"--token-secret={secrets.token_urlsafe(48)}",
    ], home / "auth")
    yield server.wait_ready()
    server.stop()


def run(python: Path, script: str, *args: str) -> object:
    done = subprocess.run([str(python), "-c", script, *args], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def people(detections: list) -> list[float]:
    return sorted((round(conf, 2) for label, conf, *_ in detections if label == "person" and conf >= 0.5), reverse=True)


def test_image_mode_finds_the_people_on_the_bus(python: Path, open_server: Server) -> None:
    detections = run(python, IMAGE_MODE, open_server.url, str(photo("bus.jpg")), "", "")
    assert people(detections) == [0.97, 0.66, 0.58]
    first = next(d for d in detections if d[1] > 0.9)
    assert first[2] == [45, 401, 209, 888] and first[3] == "yolov3-tiny"


def test_image_mode_with_login(python: Path, auth_server: Server) -> None:
    detections = run(python, IMAGE_MODE, auth_server.url, str(photo("bus.jpg")), "zm", PASSWORD)
    assert people(detections) == [0.97, 0.66, 0.58]
    # Without credentials the same server refuses, in pyzm's words.
    response = httpx.post(auth_server.url + "/infer", data={"type": "object"}, files={"image": b"x"})
    assert response.status_code == 401 and response.json() == {"detail": "Not authenticated"}


def test_url_mode_fetches_frames_from_the_portal(python: Path, open_server: Server, home: Path) -> None:
    token = "zm-" + secrets.token_hex(8)
    portal = FrameServer(frames(home), token=token)
    try:
        result = run(python, URL_MODE, open_server.url, portal.portal, token)
    finally:
        portal.close()
    assert result["frame"] == "bus"
    assert result["labels"].count("person") >= 3
    assert {q["fid"][0] for q in portal.seen} == {"blank", "bus"}
    assert token not in open_server.output()


@pytest.fixture(scope="module")
def pyzm_serve(base: Path, home: Path) -> Iterator[str]:
    server = PyzmServe(["--models", "320n", "--base-path", str(base)], home / "pyzm-serve.log", free_port())
    yield server.wait_ready().url
    server.stop()


def infer(url: str, model: str, image: Path) -> list[dict]:
    response = httpx.post(url + "/infer", data={"type": "object", "name": model},
                          files={"image": (image.name, image.read_bytes())}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["error"] is None, body
    return body["detections"]


@pytest.mark.parametrize("image", ["zidane.jpg", "bus.jpg"])
def test_yolov8_layout_boxes_match_pyzm_serve(pyzm_serve: str, open_server: Server, image: str) -> None:
    theirs = infer(pyzm_serve, "320n", photo(image))
    ours = infer(open_server.url, "320n", photo(image))
    assert theirs and len(ours) == len(theirs)
    for a, b in zip(sorted(ours, key=lambda d: d["box"]), sorted(theirs, key=lambda d: d["box"])):
        assert a["label"] == b["label"]
        assert abs(a["confidence"] - b["confidence"]) < 0.01
        assert max(abs(x - y) for x, y in zip(a["box"], b["box"])) <= 1, (a, b)
