"""pyzm's ServerConfig YAML (`--detect-config`) taking effect, the limits on fetching
frames by URL: the allow-list, the size cap, `verify_ssl` against a self-signed https
portal, bounded redirects and a body that never completes; and the default limit on the
pixels of an uploaded image."""

from __future__ import annotations

import base64
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import Server, free_port, run_kernel
from tests.detect.detect_models import self_signed
from tests.detect.detect_support import FrameServer, frames, models_folder
from tests.realmodels import photo

YAML_PASSWORD = "yaml-pass-" + "7f3c"
ZM_TOKEN = "zm-secret-7"
FETCH_CAP = 100_000


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("detect-config-fetch")


@pytest.fixture(scope="module")
def base(home: Path) -> Path:
    return models_folder(home / "models")


@pytest.fixture(scope="module")
def images(home: Path) -> dict[str, bytes]:
    return frames(home)


def people(detections: list[dict]) -> list[float]:
    return sorted((round(d["confidence"], 2) for d in detections if d["label"] == "person"), reverse=True)


# -- --detect-config: pyzm's ServerConfig YAML ------------------------------------------


@pytest.fixture(scope="module")
def yaml_server(home: Path, base: Path) -> Iterator[Server]:
    weights = base / "yolov3-tiny" / "yolov3-tiny.weights"
    config = home / "serve.yml"
    config.write_text(f"""
host: 0.0.0.0
port: 5000
base_path: {base}
auth_enabled: true
auth_username: zm
auth_password: {YAML_PASSWORD}
token_expiry_seconds: 90
token_secret: change-me
detector_config:
  pattern: "person|bus"
  models:
    - name: tiny
      weights: {weights}
    - name: Strict Tiny
      weights: {weights}
      min_confidence: 0.9
    - name: retired
      weights: {weights}
      enabled: false
""")
    # The YAML replaces what the command line says (pyzm: "CLI flags are ignored").
    server = Server(["--plugins", "detect", "--detect-config", str(config), "--detect-token-expiry", "5000",
                     "--token-secret", "k" * 48], home / "yaml")
    yield server.wait_ready()
    server.stop()


@pytest.fixture(scope="module")
def yaml_client(yaml_server: Server) -> Iterator[httpx.Client]:
    answer = httpx.post(yaml_server.url + "/login", json={"username": "zm", "password": YAML_PASSWORD})
    assert answer.status_code == 200, answer.text
    token = answer.json()["access_token"]
    with httpx.Client(base_url=yaml_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        yield client


def claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_yaml_auth_and_token_expiry_take_effect(yaml_server: Server) -> None:
    url = yaml_server.url
    assert httpx.post(url + "/login", json={"username": "admin", "password": YAML_PASSWORD}).status_code == 401
    answer = httpx.post(url + "/login", json={"username": "zm", "password": YAML_PASSWORD}).json()
    assert answer["expires"] == 90
    token = claims(answer["access_token"])
    assert token["exp"] - token["iat"] == 90 and token["sub"] == "zm"
    # auth_enabled: the inference routes want the token.
    assert httpx.post(url + "/infer", data={"type": "object"}).status_code == 401
    log = yaml_server.output()
    assert "host, port, token_secret belong to the kernel" in log
    assert YAML_PASSWORD not in log


def test_yaml_models_and_their_thresholds(yaml_client: httpx.Client) -> None:
    served = [m["name"] for m in yaml_client.get("/models").json()["models"]]
    assert served == ["tiny", "Strict Tiny"]  # the YAML's order; `enabled: false` is not served

    def infer(name: str, **fields: str) -> list[dict]:
        body = yaml_client.post("/infer", data={"type": "object", "name": name, **fields},
                                files={"image": ("bus.jpg", photo("bus.jpg").read_bytes())}).json()
        assert body["error"] is None, body
        return body["detections"]

    # An unnamed model is the YAML's first, as in pyzm.serve.
    assert {d["model_name"] for d in infer("")} == {"tiny"}
    default = infer("tiny")  # the server's default threshold, 0.3
    assert people(default)[:3] == [0.97, 0.66, 0.58] and min(d["confidence"] for d in default) >= 0.3
    strict = infer("Strict Tiny")
    assert people(strict) == [0.97] and len(strict) == 1
    # A request's min_confidence still overrides the model's, for that request only.
    assert people(infer("Strict Tiny", min_confidence="0.5")) == [0.97, 0.66, 0.58]
    assert people(infer("Strict Tiny")) == [0.97]


def test_yaml_pattern_filters_detect(yaml_client: httpx.Client) -> None:
    body = yaml_client.post("/detect", files={"file": ("bus.jpg", photo("bus.jpg").read_bytes())},
                            data={"models": "tiny"}).json()
    assert set(body["labels"]) <= {"person", "bus"} and "person" in body["labels"]


def test_toml_models_all_serves_every_model_under_the_base_path(home: Path, base: Path) -> None:
    # TOML gives a string where `--models all` gives a list: the kernel splits it.
    config = home / "detect.toml"
    config.write_text(f'[detect]\nmodels = "all"\nbase_path = "{base}"\n')
    server = Server(["--plugins", "detect", "--config", str(config)], home / "toml").wait_ready()
    try:
        served = {m["name"] for m in httpx.get(server.url + "/models").json()["models"]}
    finally:
        server.stop()
    assert served == {"yolov3-tiny", "320n"}


# -- URL fetching limits ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(home: Path) -> ssl.SSLContext:
    cert, key = self_signed(home)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture(scope="module")
def portals(images: dict[str, bytes], tls: ssl.SSLContext) -> Iterator[dict[str, FrameServer]]:
    servers = {
        "http": FrameServer(images, token=ZM_TOKEN, slow=3.0),
        "https": FrameServer(images, token=ZM_TOKEN, tls=tls),
        "elsewhere": FrameServer(images, token=ZM_TOKEN),
        "prefix": FrameServer(images, token=ZM_TOKEN),
    }
    yield servers
    for server in servers.values():
        server.close()


@pytest.fixture(scope="module")
def fetch_server(home: Path, base: Path, portals: dict[str, FrameServer]) -> Iterator[Server]:
    server = Server([
        "--plugins", "detect", "--base-path", str(base), "--models", "yolov3-tiny",
        # Allowed as host:port, as a URL prefix with a path, and as one without (which
        # `http://127.0.0.1:<prefix port>@127.0.0.1:<elsewhere port>/` starts with); `elsewhere` is not allowed.
        "--detect-fetch-allow", f"127.0.0.1:{portals['http'].port}", portals["https"].portal + "/index.php",
        portals["prefix"].portal,
        "--detect-fetch-max-bytes", str(FETCH_CAP), "--detect-fetch-max-redirects", "1",
        "--detect-fetch-timeout", "0.5",
    ], home / "fetch")
    yield server.wait_ready()
    server.stop()


def infer_url(server: Server, url: str, verify: str = "1") -> dict:
    answer = httpx.post(server.url + "/infer", data={
        "type": "object", "name": "yolov3-tiny", "url": url, "zm_auth": f"token={ZM_TOKEN}", "verify_ssl": verify,
    }, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


#: `elsewhere` is on the allowed host, 127.0.0.1, at a port no entry names.
WRONG_PORT = "the URL's port does not match the fetch allow-list entries for its host"


def test_allow_list(fetch_server: Server, portals: dict[str, FrameServer]) -> None:
    ok = infer_url(fetch_server, portals["http"].url("zidane"))
    assert ok["error"] is None and "person" in {d["label"] for d in ok["detections"]}
    refused = infer_url(fetch_server, portals["elsewhere"].url("zidane"))
    assert refused == {"detections": [], "error": f"fetch failed: {WRONG_PORT}"}
    body = {"urls": [{"frame_id": "1", "url": portals["elsewhere"].url("zidane")}], "zm_auth": f"token={ZM_TOKEN}"}
    answer = httpx.post(fetch_server.url + "/detect_urls", json=body)
    assert answer.status_code == 400
    assert answer.json() == {"detail": f"frame '1': {WRONG_PORT}"}
    assert portals["elsewhere"].seen == []  # never contacted
    # A client's URL refused is the client's mistake, not a server error.
    logged = [line for line in fetch_server.output().splitlines() if "URL-mode fetch of" in line]
    assert logged and all(" WARNING " in line for line in logged)


@pytest.mark.parametrize(("allow", "url", "why"), [
    (["http://localhost:8080/sub"], "http://localhost:8080/bus.jpg", "the URL's path does not match"),
    (["http://localhost:8080/sub"], "http://localhost:9090/sub/bus.jpg", "the URL's port does not match"),
    (["https://localhost/sub"], "http://localhost/sub/bus.jpg", "the URL's scheme does not match"),
    # the entry that came closest says what to change
    (["localhost:9090", "http://localhost:8080/sub"], "http://localhost:8080/bus.jpg", "the URL's path does not match"),
    (["zm.example.com", "http://localhost:8080/sub"], "http://elsewhere/sub/x", "the URL's host is not on"),
])
def test_an_allow_list_refusal_says_what_did_not_match(allow: list[str], url: str, why: str) -> None:
    from kernel_detect.fetch import Fetcher, FetchError

    with pytest.raises(FetchError) as refused:
        Fetcher(1.0, 1, 0, allow).check(url)
    assert str(refused.value).startswith(why)


def test_allow_list_compares_where_the_url_leads(fetch_server: Server, portals: dict[str, FrameServer]) -> None:
    prefix, elsewhere = portals["prefix"], portals["elsewhere"]
    ok = infer_url(fetch_server, prefix.url("zidane"))
    assert ok["error"] is None and ok["detections"]
    refused = {"detections": [], "error": f"fetch failed: {WRONG_PORT}"}
    # User info that spells the allowed host and port, in front of another port.
    disguised = elsewhere.url("zidane").replace("http://", f"http://127.0.0.1:{prefix.port}@")
    assert infer_url(fetch_server, disguised) == refused
    body = {"urls": [{"frame_id": "1", "url": disguised}], "zm_auth": f"token={ZM_TOKEN}"}
    answer = httpx.post(fetch_server.url + "/detect_urls", json=body)
    assert answer.status_code == 400
    assert answer.json() == {"detail": f"frame '1': {WRONG_PORT}"}
    # A redirect from an allowed portal is checked the same way.
    assert infer_url(fetch_server, prefix.url("away") + "&to=" + quote(disguised)) == refused
    # A URL prefix with a path admits that path, not a longer name.
    https = portals["https"].url("zidane")
    assert infer_url(fetch_server, https, verify="0")["error"] is None
    longer = infer_url(fetch_server, https.replace("/index.php", "/index.php.bak"), verify="0")
    assert longer["error"] == "fetch failed: the URL's path does not match the fetch allow-list entries for its host"
    assert elsewhere.seen == []


def test_a_redirect_httpx_cannot_parse_is_a_failed_fetch(fetch_server: Server, portals: dict[str, FrameServer]) -> None:
    broken = infer_url(fetch_server, portals["prefix"].url("away") + "&to=" + quote("http://127.0.0.1:port/x"))
    assert broken == {"detections": [], "error": "fetch failed: request failed (RemoteProtocolError)"}


@pytest.mark.parametrize("entry", ["user@zm.example.com", "zm.example.com/zm", "ftp://zm.example.com",
                                   "http://zm.example.com/?view=image", "zm.example.com:port"])
def test_allow_list_entries_are_checked_at_startup(home: Path, base: Path, entry: str) -> None:
    done = run_kernel(["serve", "--plugins", "detect", "--base-path", str(base), "--port", str(free_port()),
                       "--detect-fetch-allow", entry], home / "bad-allow")
    assert done.returncode != 0
    assert f"--detect-fetch-allow: {entry!r} is not a host, host:port or http(s) URL prefix" in done.stderr


def test_an_invalid_pattern_stops_the_server(home: Path, base: Path) -> None:
    done = run_kernel(["serve", "--plugins", "detect", "--base-path", str(base), "--port", str(free_port()),
                       "--detect-pattern", "("], home / "bad-pattern")
    assert done.returncode != 0
    assert "--detect-pattern: '(' is not a valid regular expression: missing ), unterminated subpattern" in done.stderr
    assert "Traceback" not in done.stderr

    config = home / "bad-pattern.yml"
    config.write_text("detector_config:\n  pattern: 'person|('\n")
    done = run_kernel(["serve", "--plugins", "detect", "--base-path", str(base), "--port", str(free_port()),
                       "--detect-config", str(config)], home / "bad-pattern")
    assert done.returncode != 0
    assert f"--detect-config {config}: detector_config.pattern: 'person|(' is not a valid regular expression" in done.stderr


def test_response_size_cap(fetch_server: Server, portals: dict[str, FrameServer], images: dict[str, bytes]) -> None:
    assert len(images["zidane"]) < FETCH_CAP < len(images["bus"])
    too_big = f"fetch failed: the frame is larger than {FETCH_CAP} bytes"
    # Refused by its declared length, and when it streams without one.
    assert infer_url(fetch_server, portals["http"].url("bus"))["error"] == too_big
    assert infer_url(fetch_server, portals["http"].url("chunked-bus"))["error"] == too_big
    streamed = infer_url(fetch_server, portals["http"].url("chunked-zidane"))
    assert streamed["error"] is None and streamed["detections"]


def test_verify_ssl(fetch_server: Server, portals: dict[str, FrameServer]) -> None:
    url = portals["https"].url("zidane")
    trusting = infer_url(fetch_server, url, verify="0")
    assert trusting["error"] is None and "person" in {d["label"] for d in trusting["detections"]}
    checking = infer_url(fetch_server, url, verify="1")
    assert checking == {"detections": [], "error": "fetch failed: request failed (ConnectError)"}
    frames_ = {"urls": [{"frame_id": "a", "url": url}], "zm_auth": f"token={ZM_TOKEN}"}
    assert httpx.post(fetch_server.url + "/detect_urls", json={**frames_, "verify_ssl": False}).status_code == 200
    strict = httpx.post(fetch_server.url + "/detect_urls", json={**frames_, "verify_ssl": True})
    assert strict.status_code == 502
    assert strict.json() == {"detail": "no frame could be fetched (a: fetch failed: request failed (ConnectError))"}


def test_redirects_are_bounded(fetch_server: Server, portals: dict[str, FrameServer]) -> None:
    one_hop = infer_url(fetch_server, portals["http"].url("hop-zidane"))
    assert one_hop["error"] is None and one_hop["detections"]
    two_hops = infer_url(fetch_server, portals["http"].url("hop-hop-zidane"))
    assert two_hops == {"detections": [], "error": "fetch failed: more than 1 redirects"}


def test_a_body_that_never_completes_times_out(fetch_server: Server, portals: dict[str, FrameServer]) -> None:
    started = time.monotonic()
    hung = infer_url(fetch_server, portals["http"].url("dribble"))
    assert hung == {"detections": [], "error": "fetch failed: no complete answer within 0.5s"}
    assert time.monotonic() - started < 2.5
    assert httpx.get(fetch_server.url + "/health").json() == {"status": "ok", "models_loaded": True}


def test_no_credentials_in_logs(fetch_server: Server) -> None:
    # Runs after the fetches above: every one carried zm_auth.
    log = fetch_server.output()
    assert ZM_TOKEN not in log and "Traceback" not in log
    assert "token=***" in log


# -- the pixel limit --------------------------------------------------------------------


def peak_memory(server: Server) -> int:
    """The server process's peak resident memory, in bytes."""
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


def test_the_default_pixel_limit_refuses_a_decompression_bomb(fetch_server: Server) -> None:
    import cv2
    import numpy as np

    # 20000 x 20000 black pixels: under 400 kB as a PNG, 1.2 GB as a decoded BGR frame.
    bomb = cv2.imencode(".png", np.zeros((20_000, 20_000), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()
    assert len(bomb) < 400_000
    before = peak_memory(fetch_server)
    answer = httpx.post(fetch_server.url + "/infer", data={"type": "object", "name": "yolov3-tiny"},
                        files={"image": ("bomb.png", bomb)}, timeout=60)
    assert answer.status_code == 400 and answer.json() == {"detail": "Could not decode image"}
    assert peak_memory(fetch_server) - before < 100 * 1024 * 1024
