"""Shared pieces of the detect tests: a models folder in pyzm's layout, the pyzm
environment, and a loopback frame server standing in for ZoneMinder's image URLs."""

from __future__ import annotations

import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.clientenv import client_python
from tests.realmodels import nudenet_320n, photo, yolov3_tiny

#: pyzm.serve reads ONNX with cv2.dnn, and only OpenCV 5 reads Ultralytics' dynamic-shape
#: exports (4.x fails in a Concat); the client only encodes PNGs with it.
PYZM = ["pyzm[ml,serve]==2.5.6", "opencv-python-headless==5.0.0.93"]


def pyzm_python() -> Path:
    """One environment for the real client (`pyzm[ml]`) and the real server (`pyzm[serve]`)."""
    return client_python("pyzm", PYZM)


def models_folder(root: Path) -> Path:
    """pyzm's layout: yolov3-tiny (Darknet, COCO) and nudenet/320n.onnx (YOLOv8 layout)."""
    darknet = yolov3_tiny()
    (root / "yolov3-tiny").mkdir(parents=True, exist_ok=True)
    shutil.copy(darknet.weights, root / "yolov3-tiny" / "yolov3-tiny.weights")
    shutil.copy(darknet.cfg, root / "yolov3-tiny" / "yolov3-tiny.cfg")
    shutil.copy(darknet.names, root / "yolov3-tiny" / "coco.names")
    (root / "nudenet").mkdir(exist_ok=True)
    shutil.copy(nudenet_320n(), root / "nudenet" / "320n.onnx")
    return root


def frames(root: Path) -> dict[str, bytes]:
    """Frames by name: bus, zidane, left (bus.jpg's left edge: one person, an umbrella), blank."""
    import cv2

    bus = cv2.imread(str(photo("bus.jpg")))
    out = {"bus": photo("bus.jpg").read_bytes(), "zidane": photo("zidane.jpg").read_bytes()}
    out["left"] = cv2.imencode(".jpg", bus[:, :260])[1].tobytes()
    out["blank"] = cv2.imencode(".jpg", bus * 0 + 128)[1].tobytes()
    return out


class FrameServer:
    """ZoneMinder's `index.php?view=image&eid=E&fid=F` on loopback, serving `frames[F]`
    when the query carries `token=<token>`; `fid=slow` answers after `slow` seconds,
    `fid=loop` redirects forever. Records the queries it saw."""

    def __init__(self, frames: dict[str, bytes], token: str = "", slow: float = 3.0) -> None:
        self.seen: list[dict[str, list[str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                outer.seen.append(query)
                fid = query.get("fid", [""])[0]
                if token and query.get("token") != [token]:
                    self.send_error(401)
                elif fid == "slow":
                    time.sleep(slow)
                    self.send_error(504)
                elif fid == "loop":
                    self.send_response(302)
                    self.send_header("Location", self.path)
                    self.end_headers()
                elif fid in frames:
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(frames[fid])))
                    self.end_headers()
                    self.wfile.write(frames[fid])
                else:
                    self.send_error(404)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.portal = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, fid: str, eid: int = 1) -> str:
        return f"{self.portal}/index.php?view=image&eid={eid}&fid={fid}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
