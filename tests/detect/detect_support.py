"""Shared pieces of the detect tests: a models folder in pyzm's layout, the pyzm
environment, and a loopback frame server standing in for ZoneMinder's image URLs."""

from __future__ import annotations

import shutil
import ssl
import subprocess
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
    `fid=dribble` sends its headers at once and then a byte a second, `fid=loop`
    redirects forever, `fid=hop-<F>` redirects once to `<F>`, `fid=away&to=<URL>`
    redirects to `<URL>` (wherever that is), `fid=chunked-<F>` sends
    `<F>` without a Content-Length. With `tls` (an SSLContext) it speaks https. Records
    the queries it saw."""

    def __init__(self, frames: dict[str, bytes], token: str = "", slow: float = 3.0,
                 tls: ssl.SSLContext | None = None) -> None:
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
                elif fid == "dribble":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    try:
                        for _ in range(int(slow) + 1):
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            time.sleep(1)
                    except OSError:
                        pass  # the server gave up on it, as it should
                elif fid == "loop":
                    self.send_response(302)
                    self.send_header("Location", self.path)
                    self.end_headers()
                elif fid == "away":
                    self.send_response(302)
                    self.send_header("Location", query["to"][0])
                    self.end_headers()
                elif fid.startswith("hop-"):
                    self.send_response(302)
                    self.send_header("Location", self.path.replace(f"fid={fid}", f"fid={fid[4:]}"))
                    self.end_headers()
                elif fid.startswith("chunked-") and fid[8:] in frames:
                    data = frames[fid[8:]]
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for start in range(0, len(data), 16384):
                        piece = data[start:start + 16384]
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
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

        Handler.protocol_version = "HTTP/1.1"  # chunked answers need it
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.portal = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, fid: str, eid: int = 1) -> str:
        return f"{self.portal}/index.php?view=image&eid={eid}&fid={fid}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class PyzmServe:
    """`python -m pyzm.serve ARGS` (pyzm's own server, in its own environment) on loopback
    port `port`, which a `--config` YAML must name itself; `wait_ready` polls /health."""

    def __init__(self, args: list[str], log: Path, port: int) -> None:
        self.log = log
        self.url = f"http://127.0.0.1:{port}"
        if "--config" not in args:
            args = [*args, "--host", "127.0.0.1", "--port", str(port)]
        with log.open("wb") as out:
            self.proc = subprocess.Popen([str(pyzm_python()), "-m", "pyzm.serve", *args],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 60) -> PyzmServe:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"pyzm.serve exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"pyzm.serve not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
