"""What a hostile client cannot do to `kernel serve --plugins detect`: stall the event loop
with a backtracking pattern or a huge zones field, make the server fetch, decode or keep
frames without bound, or keep it working after leaving. Caps are small here (options);
where responsiveness is the point, /health must answer within a second while the bad
request runs."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from kernel import StartupError
from tests.conftest import Server
from tests.detect.detect_support import FrameServer, frames, models_folder

#: Backreferences defeat `regex`'s shortcuts: seconds of backtracking on "person" in `re`
#: and `regex` alike, and longer with every group.
SLOW = "".join(r"(\w*)" for _ in range(45)) + "".join(f"(?:\\{i})" for i in range(45, 0, -1)) + "(?!)"
#: The review's pattern: 19 s in `re` on bus.jpg's labels; `regex` sees at once that it needs an X.
NESTED = r"((((\w+)+)+)+)+X"
#: 31 characters that `regex` would unroll into 10^9 nodes compiling them.
UNROLLED = "(?:(?:(?:a{1000}){1000}){1000})"
TIMEOUT = 0.3
#: 47 MB decoded, from a PNG of a few kilobytes.
BOMB_SHAPE = (3500, 4500)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("detect-limits")


@pytest.fixture(scope="module")
def images(home: Path) -> dict[str, bytes]:
    import cv2
    import numpy as np

    out = frames(home)
    out["bomb"] = cv2.imencode(".png", np.full(BOMB_SHAPE, 128, np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()
    assert len(out["bomb"]) < 100_000
    return out


@pytest.fixture(scope="module")
def server(home: Path, images: dict[str, bytes]) -> Iterator[Server]:
    srv = Server([
        "--plugins", "detect", "--base-path", str(models_folder(home / "models")), "--models", "yolov3-tiny",
        "--detect-max-frames", "4", "--detect-max-zones", "3", "--detect-max-zone-points", "50",
        "--detect-pattern-timeout", str(TIMEOUT), "--detect-fetch-parallel", "1", "--detect-fetch-timeout", "1",
        "--detect-frame-memory", "60M",  # one bomb's frame fits, two do not
    ], home / "home")
    srv.wait_ready()
    assert detect(srv, images["bus"]).status_code == 200  # the model loaded
    yield srv
    srv.stop()


def detect(server: Server, *images: bytes, timeout: float = 30, **fields: str) -> httpx.Response:
    files = [("file", (f"{i}.jpg", image)) for i, image in enumerate(images)]
    return httpx.post(server.url + "/detect", files=files, data=fields, timeout=timeout)


def responsive_while(server: Server, request: Callable[[], httpx.Response]) -> httpx.Response:
    """`request`'s answer, /health having answered within a second all the while it ran."""
    answer: list[httpx.Response | BaseException] = []

    def run() -> None:
        try:
            answer.append(request())
        except BaseException as exc:  # noqa: BLE001 (handed to the test's thread)
            answer.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        for _ in range(600):
            if not worker.is_alive():
                break
            started = time.monotonic()
            assert httpx.get(server.url + "/health", timeout=1.0).status_code == 200
            assert time.monotonic() - started < 1.0
            time.sleep(0.05)
    finally:
        worker.join(60)
    (result,) = answer
    if isinstance(result, BaseException):
        raise result
    return result


def memory(server: Server, field: str) -> int:
    """`VmRSS` (now) or `VmHWM` (peak) of the server, in bytes."""
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field + ":"))) * 1024


# -- patterns -------------------------------------------------------------------------------


def test_a_backtracking_pattern_is_stopped_without_stalling_the_server(server: Server, images: dict[str, bytes]) -> None:
    stopped = f"took more than {TIMEOUT:g}s to match the labels (--detect-pattern-timeout); simplify it"
    answer = responsive_while(server, lambda: detect(server, images["bus"], pattern=SLOW))
    assert answer.status_code == 400 and answer.json() == {"detail": f"pattern {stopped}"}
    everywhere = json.dumps([{"name": "all", "value": "0,0 810,0 810,1080 0,1080", "ignore_pattern": SLOW}])
    answer = responsive_while(server, lambda: detect(server, images["bus"], zones=everywhere))
    assert answer.status_code == 400 and answer.json() == {"detail": f"zone 'all' ignore_pattern {stopped}"}
    nested = responsive_while(server, lambda: detect(server, images["bus"], pattern=NESTED, timeout=10))
    assert nested.status_code == 200 and nested.json()["labels"] == []
    assert detect(server, images["bus"], pattern="bus|car").json()["labels"] == ["bus"]


def test_patterns_that_are_long_or_unroll_are_refused(server: Server, images: dict[str, bytes]) -> None:
    from kernel_detect.config import DetectConfig, settings

    unrolled = detect(server, images["blank"], pattern=UNROLLED)
    assert unrolled.status_code == 400
    assert unrolled.json() == {"detail": "pattern repeats too much: counted repeats such as {100} multiply when nested"}
    long = detect(server, images["blank"], pattern="a" * 1001)
    assert long.status_code == 400 and long.json() == {"detail": "pattern is longer than 1000 characters"}
    with pytest.raises(StartupError, match=r"--detect-pattern: .* repeats too much"):
        settings(DetectConfig(pattern=UNROLLED))
    # `re` takes 200 nested groups; `regex` would recurse past Python's limit compiling them
    nested = "(?:" * 200 + "person" + ")" * 200
    answer = detect(server, images["blank"], pattern=nested)
    assert answer.status_code == 400 and answer.json() == {"detail": "pattern nests groups too deeply"}
    with pytest.raises(StartupError, match=r"--detect-pattern: .* nests groups too deeply"):
        settings(DetectConfig(pattern=nested))


def test_time_waiting_for_the_interpreter_is_not_charged_to_a_pattern() -> None:
    import msgspec
    from kernel_detect.filters import Budget, compile_pattern

    # another thread holds the interpreter lock in long C calls, as a JSON decode does
    text = msgspec.json.encode([1.5] * 3_000_000)
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            msgspec.json.decode(text)

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        budget, person = Budget(0.2), compile_pattern("person|car")
        for _ in range(200):  # each match may wait for the lock (5 ms switches): past 0.2 s in all
            assert budget.match(person, "person", "pattern")
    finally:
        stop.set()
        thread.join()


# -- frames -------------------------------------------------------------------------------


def test_frames_per_request_are_capped(server: Server, portal: FrameServer, images: dict[str, bytes]) -> None:
    capped = {"detail": "at most 4 frames per request (--detect-max-frames); 5 given"}
    files = detect(server, *[images["blank"]] * 5)
    assert files.status_code == 400 and files.json() == capped
    seen = len(portal.seen)
    body = {"urls": [{"frame_id": str(i), "url": portal.url("blank", eid=i)} for i in range(5)]}
    urls = httpx.post(server.url + "/detect_urls", json=body)
    assert urls.status_code == 400 and urls.json() == capped
    assert len(portal.seen) == seen  # nothing fetched
    long = portal.url("a" * 8192)
    refused = httpx.post(server.url + "/detect_urls", json={"urls": [{"frame_id": "1", "url": long}]})
    assert refused.status_code == 400 and refused.json() == {"detail": "frame '1': the URL is longer than 8192 characters"}
    infer = httpx.post(server.url + "/infer", data={"type": "object", "url": long}).json()
    assert infer == {"detections": [], "error": "fetch failed: the URL is longer than 8192 characters"}
    assert "a" * 8192 not in server.output()
    named = httpx.post(server.url + "/detect_urls", json={"urls": [{"frame_id": "x" * 257, "url": portal.url("bus")}]})
    assert named.status_code == 422


def test_detect_urls_stops_when_the_client_leaves(server: Server, portal: FrameServer) -> None:
    # One fetch at a time, each given up after 1 s: left running, the second starts at 1 s.
    body = {"urls": [{"frame_id": str(i), "url": portal.url("slow", eid=900)} for i in range(4)]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/detect_urls", json=body, timeout=0.5)
    time.sleep(2.0)
    assert sum(query["eid"] == ["900"] for query in portal.seen) == 1
    assert "/detect_urls: the client left; its work was stopped" in server.output()
    assert "Traceback" not in server.output()


def test_detect_decodes_one_frame_at_a_time(server: Server, images: dict[str, bytes]) -> None:
    def peak(files: int) -> int:
        """How far `files` bombs in one /detect raise the server's memory at most."""
        Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")  # the peak starts again from now
        before = memory(server, "VmRSS")
        assert detect(server, *[images["bomb"]] * files).status_code == 200
        return memory(server, "VmHWM") - before

    # Held together, four would peak three frames higher than one.
    assert peak(4) - peak(1) < BOMB_SHAPE[0] * BOMB_SHAPE[1] * 3


def test_frames_held_by_concurrent_requests_are_bounded(server: Server, images: dict[str, bytes]) -> None:
    Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")
    before = memory(server, "VmRSS")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: detect(server, images["bomb"]), range(8)))
    peak = memory(server, "VmHWM") - before
    codes = sorted(a.status_code for a in answers)
    assert set(codes) == {200, 503} and codes.count(200) >= 1, codes
    refused = next(a for a in answers if a.status_code == 503)
    assert "--detect-frame-memory" in refused.json()["detail"] and refused.headers["Retry-After"]
    # Held: one frame, plus a refused one until it is dropped; being decoded: up to two
    # frames' worth per helper thread (one per core), grey rows and the colour frame. Eight
    # held at once, as before refused frames were let go at once, peaked at nine on two cores.
    frame = BOMB_SHAPE[0] * BOMB_SHAPE[1] * 3
    assert peak < (2 + 2 * (os.cpu_count() or 1)) * frame
    assert detect(server, images["bomb"]).status_code == 200  # what was held is given back


def test_the_url_frame_cache_holds_a_modest_amount(server: Server, portal: FrameServer) -> None:
    def infer(n: int) -> dict:
        return httpx.post(server.url + "/infer", data={"type": "object", "url": portal.url("bomb") + f"&n={n}"},
                          timeout=30).json()

    assert infer(0)["error"] is None
    before = memory(server, "VmRSS")
    for n in range(1, 7):
        assert infer(n)["error"] is None
    # Six kept would be 280 MB; 64 MiB of them fit one.
    assert memory(server, "VmRSS") - before < 2.5 * BOMB_SHAPE[0] * BOMB_SHAPE[1] * 3


# -- zones --------------------------------------------------------------------------------


def square(name: str, x: int, points: int = 4) -> dict:
    """A zone of `points` points on a 10-pixel square at (x, 0) (extra points on its top edge)."""
    top = [[x + 10 * i / (points - 3), 0] for i in range(points - 2)]
    return {"name": name, "points": [*top, [x + 10, 10], [x, 10]]}


def test_zones_and_their_points_are_capped(server: Server, portal: FrameServer, images: dict[str, bytes]) -> None:
    four = [square(f"z{i}", 1000 + 20 * i) for i in range(4)]
    too_many = {"detail": "zones: at most 3 zones per request (--detect-max-zones)"}
    answer = detect(server, images["blank"], zones=json.dumps(four))
    assert answer.status_code == 400 and answer.json() == too_many
    urls = httpx.post(server.url + "/detect_urls", json={"urls": [{"url": portal.url("bus")}], "zones": four})
    assert urls.status_code == 400 and urls.json() == too_many
    crowded = {"detail": "zone 'z': at most 50 points per zone (--detect-max-zone-points)"}
    answer = detect(server, images["blank"], zones=json.dumps([square("z", 0, 51)]))
    assert answer.status_code == 400 and answer.json() == crowded
    text = " ".join(f"{i},0" for i in range(49)) + " 9,9"
    answer = detect(server, images["blank"], zones=json.dumps([{"name": "z", "value": text + " 0,9"}]))
    assert answer.status_code == 400 and answer.json() == crowded
    # At the caps, away from every box: all of them rejected.
    body = detect(server, images["bus"], zones=json.dumps([square(f"z{i}", 2000 + 20 * i, 50) for i in range(3)])).json()
    assert body["boxes"] == [] and len(body["error_boxes"]) == 5


def test_a_huge_zones_field_is_refused_without_stalling_the_server(server: Server, images: dict[str, bytes]) -> None:
    # 4 MB: 300,000 points, 80 s of parsing and intersecting for the review's 6 million.
    huge = json.dumps([{"name": "z", "points": [[5000 + i % 7, i % 5] for i in range(300_000)]}])
    answer = responsive_while(server, lambda: detect(server, images["bus"], zones=huge))
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith("zones: longer than 31776 characters (at most 3 zones of 50 points")
