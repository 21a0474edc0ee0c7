"""`--oip-auth` with a policy decision point, seen through tritonclient over REST and gRPC."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest

import kernel
from tests.conftest import free_port, run_kernel
from tests.oip.oip_models import repository
from tests.oip.oip_support import run_client, start_server

SECRET = "oip-test-secret-" + "x" * 40
PDP_TIMEOUT = 0.5


class PolicyDecisionPoint(BaseHTTPRequestHandler):
    """Permits everything except the `versioned` model, never answers about `kinds`, and
    trickles its PERMIT for `pooled` past the timeout (asked by qualified name, whatever name
    the request used)."""

    asked: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        ask = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.asked.append(ask)
        if ask["resource"] == "dir.kinds":
            time.sleep(PDP_TIMEOUT * 3)
        decision = b"DENY" if ask["resource"] in ("dir.versioned", "dir.kinds") else b"PERMIT"
        self.send_response(200)
        self.send_header("Content-Length", str(len(decision)))
        if ask["resource"] == "dir.pooled":  # PERMIT, a byte at a time: each read is quick, the answer late
            self.end_headers()
            for byte in decision:
                time.sleep(PDP_TIMEOUT * 0.6)
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            return
        self.end_headers()
        self.wfile.write(decision)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def pdp() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), PolicyDecisionPoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/pdp"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory, pdp: str) -> Iterator[dict]:
    models = repository(tmp_path_factory.mktemp("models"))
    server, grpc_port = start_server(
        tmp_path_factory.mktemp("home"), models, "--oip-auth", "--token-secret", SECRET,
        "--oip-pdp-url", pdp, "--oip-pdp-timeout", str(PDP_TIMEOUT),
    )
    tokens = kernel.TokenIssuer(SECRET)
    good = tokens.issue("svc", ["oip:read", "oip:infer"], ttl=600)
    wrong = tokens.issue("svc", ["zoo"], ttl=600)
    try:
        seen = run_client("triton_auth.py", f"127.0.0.1:{server.port}", f"127.0.0.1:{grpc_port}", good, wrong)
        # the same model under its other name is the same resource to the PDP
        qualified = httpx.post(f"{server.url}/v2/models/dir.versioned/infer", json={"inputs": []},
                               headers={"Authorization": f"Bearer {good}"})
        seen["http"]["pdp_denies_qualified"] = str(qualified.status_code)
        late = httpx.post(f"{server.url}/v2/models/pooled/infer", json={"inputs": []},
                          headers={"Authorization": f"Bearer {good}"}, timeout=30)
        seen["http"]["pdp_late_permit"] = str(late.status_code)
        yield seen
    finally:
        server.stop()
        assert SECRET not in server.output() and good not in server.output()


def test_rest_statuses(seen):
    http = seen["http"]
    assert http["live_without_token"] is True
    assert http["no_token"] == "401" and http["forged"] == "401"
    assert http["wrong_scope"] == "403" and http["metadata_wrong_scope"] == "403"
    assert http["unload_needs_repository_scope"] == "403"
    assert http["good"] == "ok"


def test_grpc_statuses(seen):
    grpc = seen["grpc"]
    assert grpc["live_without_token"] is True
    assert grpc["no_token"] == "StatusCode.UNAUTHENTICATED" and grpc["forged"] == "StatusCode.UNAUTHENTICATED"
    assert grpc["wrong_scope"] == "StatusCode.PERMISSION_DENIED"
    assert grpc["unload_needs_repository_scope"] == "StatusCode.PERMISSION_DENIED"
    assert grpc["good"] == "ok"


def test_policy_decision_point_denies_and_silence_denies(seen):
    assert seen["http"]["pdp_denies"] == "403" and seen["http"]["pdp_silent"] == "403"
    assert seen["grpc"]["pdp_denies"] == "StatusCode.PERMISSION_DENIED"
    assert seen["grpc"]["pdp_silent"] == "StatusCode.PERMISSION_DENIED"
    asked = PolicyDecisionPoint.asked
    assert seen["http"]["pdp_denies_qualified"] == "403"
    assert seen["http"]["pdp_late_permit"] == "403"  # the timeout bounds the whole answer
    assert {"resource": "dir.affine", "action": "infer"}.items() <= asked[0].items()
    assert all(a["jwt"] for a in asked)


def test_a_policy_decision_point_without_auth_stops_startup(tmp_path):
    # without a token there is nothing to ask the PDP about: the server would serve everyone
    done = run_kernel(["serve", "--plugins", "oip", "--port", str(free_port()), "--oip-grpc-port", "0",
                       "--oip-pdp-url", "http://127.0.0.1:9/pdp"], tmp_path, timeout=30)
    assert done.returncode == 1
    assert "plugin 'oip' config: pdp_url (--oip-pdp-url) needs auth (--oip-auth)" in done.stderr
