"""Bodies far larger than their model takes are refused before they cost memory: a hostile
client's few kilobytes must not make the server build hundreds of megabytes of objects."""

from __future__ import annotations

import gzip
import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server
from tests.oip.oip_models import affine
from tests.oip.oip_support import start_server

LIMIT = 32 * 1024 * 1024
#: 30 MB of JSON `data`: 7.5 million elements, for an input of four.
FLOOD = b"1.5," * 7_500_000 + b"1.5"
MB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = tmp_path_factory.mktemp("models")
    affine(models / "fixed" / "model.onnx", 2.0, 1.0, batch=1)  # x FP32 [1, 4]
    started, _ = start_server(tmp_path_factory.mktemp("home"), models, "--max-body-size", str(LIMIT))
    # Loaded before anything is measured: a load takes memory of its own.
    assert httpx.post(f"{started.url}/v2/models/fixed/infer", json=request([1, 2, 3, 4])).status_code == 200
    yield started
    started.stop()
    assert "Traceback" not in started.output()


def request(data: object) -> dict:
    return {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": data}]}


def flood(encoding: str) -> bytes:
    body = json.dumps(request([])).encode().replace(b"[]", b"[" + FLOOD + b"]")
    return gzip.compress(body) if encoding == "gzip" else body  # gzip: 30 KB that inflate to 30 MB


def post_measured(server: Server, model: str, body: bytes, encoding: str) -> tuple[tuple[int, dict], float]:
    """The answer to `body`, and how far the server's peak memory rose above what it held
    before, in MB."""
    status = Path(f"/proc/{server.proc.pid}/status")

    def read(field: str) -> int:
        return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith(field))

    Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")  # resets VmHWM to VmRSS
    before = read("VmRSS:")
    answer = httpx.post(f"{server.url}/v2/models/{model}/infer", content=body,
                        headers={"Content-Encoding": encoding}, timeout=60)
    return (answer.status_code, answer.json()), (read("VmHWM:") - before) / 1024


def test_a_content_length_past_the_limit_is_a_413_before_any_memory_is_set_aside(server):
    # a binary request announcing a terabyte was a 500 (numpy could not allocate 931 GiB)
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.putrequest("POST", "/v2/models/fixed/infer")
        connection.putheader("Inference-Header-Content-Length", "10")
        connection.putheader("Content-Length", "1000000000000")
        connection.endheaders(b"{}")
        answer = connection.getresponse()
        assert (answer.status, json.loads(answer.read())) == (
            413, {"error": f"the request body is larger than {LIMIT} bytes"})
    finally:
        connection.close()


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
def test_a_request_for_a_model_there_is_not_is_answered_before_its_body_is_decoded(server, encoding):
    answer, growth = post_measured(server, "nope", flood(encoding), encoding)
    assert answer == (404, {"error": "model 'nope' not found"})
    assert growth < 20, f"the server's peak memory grew {growth:.0f} MB"  # decoded, it grew 300 MB


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
def test_json_data_far_more_than_a_fixed_shape_takes_is_refused_before_it_is_decoded(server, encoding):
    answer, growth = post_measured(server, "fixed", flood(encoding), encoding)
    assert answer == (400, {"error": "input 'x': at least 7500001 elements of data, expected 4 for shape [1, 4]"})
    # the body itself, and once more as it is joined or inflated; decoded, it grew 300 MB
    assert growth < 4 * len(FLOOD) / MB, f"the server's peak memory grew {growth:.0f} MB"


PADDING = " " * 100_000
#: Requests to the fixed model far longer than its four elements need: refused, or (padded
#: valid data) served, without decoding what cannot fit.
LONG = {
    "nested lists": (f'[{"[1.5], " * 100_000}[1.5]]', "input 'x': data holds 100002 lists, more than data of shape [1, 4] can"),
    "empty lists": (f'[{"[], " * 100_000}[1, 2, 3, 4]]', "input 'x': data holds 100002 lists, more than data of shape [1, 4] can"),
    "a string": (f'[{"1.5, " * 100_000}"1.5"]', "input 'x': FP32 data must be JSON numbers; it holds strings or objects"),
    "no float holds it": (f"[1, 2, 3, 1e400{PADDING}]",
                          "input 'x': FP32 data must be JSON numbers; Number out of range - at `data[3]`"),
    "null": (f"null{PADDING}", "input 'x' has no data"),
    "short": (f"[1, 2, 3{PADDING}]", "input 'x': 3 elements of data, expected 4 for shape [1, 4]"),
    "padded": (f"[1, 2, 3, 4{PADDING}]", None),
    "padded and nested": (f"[[1, 2,{PADDING} 3, 4]]", None),
}


@pytest.mark.parametrize("case", LONG)
def test_json_data_longer_than_a_fixed_shape_needs_is_sized_up_before_it_is_decoded(server, case):
    data, error = LONG[case]
    body = json.dumps(request("DATA")).replace('"DATA"', data).encode()
    answer = httpx.post(f"{server.url}/v2/models/fixed/infer", content=body, timeout=10)
    if error is not None:
        assert (answer.status_code, answer.json()) == (400, {"error": error})
    else:
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [3.0, 5.0, 7.0, 9.0]


def test_a_body_inflating_past_the_limit_is_a_413_without_inflating_further(server):
    answer, growth = post_measured(server, "fixed", gzip.compress(b" " * (4 * LIMIT)), "gzip")
    assert answer == (413, {"error": f"the decompressed request is larger than {LIMIT} bytes"})
    assert growth < 2 * LIMIT / MB, f"the server's peak memory grew {growth:.0f} MB"
