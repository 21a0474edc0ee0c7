"""The `end2end` decoder (an ONNX model with an [N, 6] output and metadata end2end="true",
run by onnxruntime) and the `ssd` decoder (a TFLite model with boxes, classes, scores and
count, run by the TFLite runtime), through /infer and /detect.

Both models answer fixed detections, so the expected boxes follow from the geometry alone:
the frame is 1280x640; the ONNX input is letterboxed into 640x640 (scale 0.5, 160 pixels
of padding above and below); the SSD input is the frame stretched to 300x300.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import Server
from tests.detect.detect_models import end2end_onnx, ssd_tflite

E2E_NAMES = ("person", "car")
SSD_LABELS = ("cat", "dog", "bird")


@pytest.fixture(scope="module")
def frame() -> bytes:
    import cv2

    return cv2.imencode(".png", np.full((640, 1280, 3), 90, np.uint8))[1].tobytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("detect-decoders")
    base = home / "models"
    end2end_onnx(base / "e2e" / "e2e.onnx", np.array([
        [100, 200, 300, 400, 0.9, 1],  # x1 y1 x2 y2 in input pixels, score, class
        [10, 170, 50, 210, 0.5, 0],
        [0, 0, 10, 10, 0.1, 0],  # below any threshold used here
    ]), E2E_NAMES)
    ssd_tflite(base / "ssd" / "ssd.tflite", [
        ("boxes", np.array([[[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.5, 0.25], [0, 0, 1, 1]]])),  # ymin xmin ymax xmax
        ("classes", np.array([[0, 2, 1]])),
        ("scores", np.array([[0.9, 0.6, 0.95]])),
        ("count", np.array([2])),  # the third row is padding, its high score notwithstanding
    ])
    (base / "ssd" / "labels.txt").write_text("\n".join(SSD_LABELS) + "\n")
    srv = Server(["--plugins", "detect", "--base-path", str(base), "--models", "all"], home / "home")
    yield srv.wait_ready()
    srv.stop()


def infer(server: Server, frame: bytes, name: str, **fields: str) -> list[tuple[str, float, list[int]]]:
    answer = httpx.post(server.url + "/infer", data={"type": "object", "name": name, **fields},
                        files={"image": ("frame.png", frame, "image/png")}, timeout=60)
    assert answer.status_code == 200 and answer.json()["error"] is None, answer.text
    return [(d["label"], round(d["confidence"], 3), d["box"]) for d in answer.json()["detections"]]


def test_end2end_boxes_are_mapped_back_through_the_letterbox(server: Server, frame: bytes) -> None:
    assert infer(server, frame, "e2e") == [("car", 0.9, [200, 80, 600, 480]), ("person", 0.5, [20, 20, 100, 100])]
    assert infer(server, frame, "e2e", min_confidence="0.6") == [("car", 0.9, [200, 80, 600, 480])]


def test_ssd_boxes_classes_scores_and_count(server: Server, frame: bytes) -> None:
    assert infer(server, frame, "ssd") == [("cat", 0.9, [640, 160, 1280, 480]), ("bird", 0.6, [0, 0, 320, 320])]
    assert infer(server, frame, "ssd", min_confidence="0.7") == [("cat", 0.9, [640, 160, 1280, 480])]


def test_both_through_detect_with_a_zone(server: Server, frame: bytes) -> None:
    zone = '[{"name": "left", "value": [[0, 0], [400, 0], [400, 640], [0, 640]]}]'
    answer = httpx.post(server.url + "/detect", files={"file": ("frame.png", frame)},
                        data={"models": "e2e,ssd", "zones": zone}, timeout=60)
    body = answer.json()
    assert answer.status_code == 200, body
    # In the zone: e2e's car and person (x1 < 400) and ssd's bird; ssd's cat lies right of it.
    assert sorted(zip(body["labels"], body["model_names"], body["boxes"])) == [
        ("bird", "ssd", [0, 0, 320, 320]), ("car", "e2e", [200, 80, 600, 480]), ("person", "e2e", [20, 20, 100, 100]),
    ]
    assert body["error_boxes"] == [[640, 160, 1280, 480]]
    models = {m["name"]: m for m in httpx.get(server.url + "/models").json()["models"]}
    assert models["ssd"]["framework"] == "coral" and models["e2e"]["framework"] == "onnxruntime"
