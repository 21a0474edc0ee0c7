"""The real pyzm 2.5.6 client against `kernel serve --plugins detect`, our boxes against
pyzm.serve's own on the same model and photo, and the order both list and pick models in."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import Server, free_port
from tests.detect.detect_models import end2end_onnx
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

UNNAMED = """
import json, sys
from pyzm import Detector
url, image = sys.argv[1:3]
# An ml_sequence entry without a name: the client sends name="", the gateway's first model.
detector = Detector.from_dict({"general": {"ml_gateway": url}, "object": {"sequence": [{"object_framework": "opencv"}]}})
result = detector.detect(image)
print(json.dumps([[d.label, d.confidence, d.bbox.as_list(), d.model_name] for d in result.detections]))
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


# -- model order: pyzm.serve's is the configured one, not the alphabetical --------------


#: Two models whose names sort the other way ("320n" first): the same weights under two
#: names, since pyzm.serve cannot load Darknet models (yolov3-tiny) under OpenCV 5.
ALIASED = ["--models", "NudeNet=320n", "320n"]


@pytest.fixture(scope="module")
def ordered(base: Path, home: Path) -> Iterator[dict[str, str]]:
    """pyzm.serve and ours with ALIASED, and ours with the review's yolov3-tiny and 320n."""
    where = ["--base-path", str(base)]
    theirs = PyzmServe([*ALIASED, *where], home / "pyzm-ordered.log", free_port())
    ours = Server(["--plugins", "detect", *ALIASED, *where], home / "ordered")
    tiny = Server(["--plugins", "detect", "--models", "YOLO tiny=yolov3-tiny", "320n", *where], home / "ordered-tiny")
    try:
        yield {"pyzm": theirs.wait_ready().url, "ours": ours.wait_ready().url, "tiny": tiny.wait_ready().url}
    finally:
        tiny.stop()
        ours.stop()
        theirs.stop()


def test_an_unnamed_model_is_the_first_configured(python: Path, ordered: dict[str, str]) -> None:
    # The review's case: pyzm.serve (under OpenCV 4) answered from YOLO tiny.
    detections = run(python, UNNAMED, ordered["tiny"], str(photo("bus.jpg")))
    assert {d[3] for d in detections} == {"YOLO tiny"}
    assert people(detections) == [0.97, 0.66, 0.58]


@pytest.mark.parametrize("server", ["pyzm", "ours"])
def test_an_unnamed_model_is_the_first_configured_as_in_pyzm_serve(python: Path, ordered: dict[str, str],
                                                                    server: str) -> None:
    detections = run(python, UNNAMED, ordered[server], str(photo("zidane.jpg")))
    assert detections and {d[3] for d in detections} == {"NudeNet"}


def names(url: str) -> list[str]:
    return [m["name"] for m in httpx.get(url + "/models", timeout=10).json()["models"]]


def test_models_are_listed_in_the_configured_order(ordered: dict[str, str]) -> None:
    assert names(ordered["ours"]) == names(ordered["pyzm"]) == ["NudeNet", "320n"]
    assert names(ordered["tiny"]) == ["YOLO tiny", "320n"]


def test_all_lists_and_picks_in_discovery_order(home: Path) -> None:
    """`all`: folders in order, then files in each, whatever the models are called."""
    base = home / "discovery"
    rows = np.array([[100, 200, 300, 400, 0.9, 0]])
    for folder, stem in (("a", "zeta"), ("b", "beta"), ("b", "alpha")):
        end2end_onnx(base / folder / f"{stem}.onnx", rows, ["person"])
    args = ["--models", "all", "--base-path", str(base)]
    theirs = PyzmServe(args, home / "pyzm-discovery.log", free_port())
    ours = Server(["--plugins", "detect", *args], home / "discovery-ours")
    try:
        listed = {"pyzm": names(theirs.wait_ready().url), "ours": names(ours.wait_ready().url)}
        image = photo("bus.jpg")
        answer = httpx.post(ours.url + "/infer", data={"type": "object", "name": ""},
                            files={"image": (image.name, image.read_bytes())}, timeout=60).json()
    finally:
        ours.stop()
        theirs.stop()
    assert listed["ours"] == listed["pyzm"] == ["zeta", "alpha", "beta"]
    assert answer["error"] is None and {d["model_name"] for d in answer["detections"]} == {"zeta"}
