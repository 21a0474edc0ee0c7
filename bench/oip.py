"""OIP latency and throughput: kernel's oip plugin vs raw onnxruntime vs MLServer 1.7.1.

One bounded run, on loopback, for a tiny model (x[1,4] -> 2x+1) and a small detector (the
YOLOv8n-layout ONNX from tests/realmodels at 640x640): p50/p99 latency per request for
REST JSON, REST binary and gRPC, each against onnxruntime called directly in this process
and against MLServer serving the same file through a small onnxruntime runtime (in its own
environment). Requests are encoded once, before timing. Each server call alternates with a
direct runtime call, and a row's added time is against the runtime's p50 in that same row,
so a busy machine slows both sides alike. REST requests go over one kept-alive
`http.client` connection, a lean client like tritonclient's, so that the client's own
Python work does not hide the server's. Then, with dynamic batching on and 16 concurrent
gRPC clients, the throughput as a fraction of the runtime's own batched throughput, and
how the CPU time split between server and clients.

    python bench/oip.py [--tiny N] [--detector N] [--seconds S] [--no-mlserver] [--server-args ARGS]
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kernel_oip.proto import grpc_service_pb2 as pb

from bench.procfs import cpu_seconds
from tests.clientenv import client_python
from tests.conftest import Server, free_port
from tests.oip.oip_models import affine
from tests.realmodels import nudenet_320n

MLSERVER = ["mlserver==1.7.1", "uvloop==0.21.0", "onnxruntime", "numpy<2.3"]
CLIENTS = 16

RUNTIME = '''
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceResponse


class OnnxModel(MLModel):
    async def load(self):
        self.session = ort.InferenceSession(self.settings.parameters.uri, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload):
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        values = self.session.run(self.output_names, feeds)
        return InferenceResponse(model_name=self.name, outputs=[
            NumpyCodec.encode_output(name, value) for name, value in zip(self.output_names, values)])
'''


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def timed(raw: Callable[[], object], call: Callable[[], object], count: int,
          budget: float, settle: float) -> tuple[list[float], list[float]]:
    """Alternate a direct runtime call and a server call; the samples of each. Each call
    waits `settle` seconds first: a runtime's threads spin for a while after a call, and
    would otherwise take the cores from the other side's next one."""
    raw()
    call()  # warm up: loads, connections
    raws: list[float] = []
    samples: list[float] = []
    deadline = time.monotonic() + budget
    for _ in range(count):
        for fn, into in ((raw, raws), (call, samples)):
            time.sleep(settle)
            started = time.perf_counter()
            fn()
            into.append(time.perf_counter() - started)
        if time.monotonic() > deadline:
            break
    return raws, samples


class Requests:
    """One model's requests, encoded once, for every wire format."""

    def __init__(self, name: str, input_name: str, x: np.ndarray) -> None:
        tensor = {"name": input_name, "shape": list(x.shape), "datatype": "FP32"}
        self.json = json.dumps({"inputs": [{**tensor, "data": x.reshape(-1).tolist()}]}).encode()
        head = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
                           "parameters": {"binary_data_output": True}}).encode()
        self.binary = head + x.tobytes()
        self.binary_headers = {"Inference-Header-Content-Length": str(len(head)),
                               "Content-Type": "application/octet-stream"}
        self.grpc = pb.ModelInferRequest(model_name=name)
        self.grpc.inputs.add(name=input_name, datatype="FP32", shape=list(x.shape))
        self.grpc.raw_input_contents.append(x.tobytes())
        self.grpc_bytes = self.grpc.SerializeToString()


def infer_call(channel: grpc.Channel) -> Callable[..., object]:
    """ModelInfer taking a request serialized in advance, as the REST rows send bytes encoded
    in advance; the answer is parsed as any client would."""
    return channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=None,
                               response_deserializer=pb.ModelInferResponse.FromString)


def measure_server(http_addr: str, grpc_addr: str, name: str, req: Requests, raw: Callable[[], object],
                   count: int, budget: float, settle: float) -> dict:
    """Per path: (p50, p99) of the server and the runtime's p50 in the same run, or an error."""
    rows: dict = {}
    options = [("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)]
    host, port = http_addr.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.connect()
    # Without TCP_NODELAY the client's separate header and body writes meet delayed ACKs (~40 ms).
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with grpc.insecure_channel(grpc_addr, options=options) as ch:
        infer = infer_call(ch)

        def post(body: bytes, headers: dict) -> Callable[[], object]:
            def call() -> None:
                connection.request("POST", f"/v2/models/{name}/infer", body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"HTTP {answer.status}: {data[:200]!r}")
            return call

        for label, call in (("REST JSON", post(req.json, {"Content-Type": "application/json"})),
                            ("REST binary", post(req.binary, req.binary_headers)),
                            ("gRPC", lambda: infer(req.grpc_bytes, timeout=60))):
            try:
                raws, samples = timed(raw, call, count, budget, settle)
                rows[label] = (*percentiles(samples), percentiles(raws)[0])
            except (RuntimeError, grpc.RpcError) as exc:
                rows[label] = str(exc).splitlines()[0][:60]
    connection.close()
    return rows


def batched_throughput(grpc_addr: str, name: str, input_name: str, x: np.ndarray, server_pid: int,
                       seconds: float) -> dict:
    request = Requests(name, input_name, x).grpc_bytes
    done = [0] * CLIENTS
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        with grpc.insecure_channel(grpc_addr, options=[("grpc.max_receive_message_length", 1 << 30)]) as channel:
            infer = infer_call(channel)
            infer(request, timeout=30)
            while time.monotonic() < stop:
                infer(request, timeout=30)
                done[i] += 1

    server_cpu, own_cpu, started = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {"rps": sum(done) / elapsed, "server_cpu": cpu_seconds(server_pid) - server_cpu,
            "client_cpu": time.process_time() - own_cpu, "elapsed": elapsed}


def raw_batched(path: Path, input_name: str, x: np.ndarray, seconds: float) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = np.repeat(x, CLIENTS, axis=0)
    session.run(None, {input_name: batch})
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, {input_name: batch})
        count += CLIENTS
    return count / (time.perf_counter() - started)


def start_mlserver(root: Path, models: dict[str, Path]) -> tuple[subprocess.Popen, str, str]:
    python = client_python("mlserver", MLSERVER)
    folder = root / "mlserver"
    folder.mkdir()
    (folder / "runtime.py").write_text(RUNTIME)
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (folder / "settings.json").write_text(json.dumps({
        "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        "parallel_workers": 0, "host": "127.0.0.1", "debug": False,
        "grpc_max_message_length": 1 << 30,  # a 640x640 frame is over gRPC's 4 MiB default
    }))
    for name, path in models.items():
        (folder / name).mkdir()
        shutil.copy(path, folder / name / "model.onnx")
        (folder / name / "model-settings.json").write_text(json.dumps({
            "name": name, "implementation": "runtime.OnnxModel",
            "parameters": {"uri": str(folder / name / "model.onnx")},
        }))
    with open(root / "mlserver.log", "wb") as log:
        proc = subprocess.Popen([str(python.parent / "mlserver"), "start", str(folder)], cwd=folder,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"MLServer exited: {(root / 'mlserver.log').read_text()[-2000:]}")
        try:
            if all(httpx.get(f"{url}/v2/models/{n}/ready", timeout=1).status_code == 200 for n in models):
                return proc, url, f"127.0.0.1:{grpc_port}"
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("MLServer did not get ready in 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", type=int, default=400, help="requests per row for the tiny model")
    parser.add_argument("--detector", type=int, default=20, help="requests per row for the detector")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each throughput run")
    parser.add_argument("--no-mlserver", action="store_true")
    parser.add_argument("--server-args", default="", help="more `kernel serve` options, e.g. \"--infer-workers 1\"")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="oip-bench-"))
    models = root / "models"
    tiny_path = affine(models / "tiny" / "model.onnx", 2.0, 1.0)
    detector_path = models / "detector" / "model.onnx"
    detector_path.parent.mkdir(parents=True)
    shutil.copy(nudenet_320n(), detector_path)
    # The same files again, with dynamic batching on, for the throughput runs.
    for name, path in (("tiny", tiny_path), ("detector", detector_path)):
        (models / f"{name}batch").mkdir()
        shutil.copy(path, models / f"{name}batch" / "model.onnx")
        (models / f"{name}batch" / "config.toml").write_text(
            f"max_batch_size = {CLIENTS}\nmax_queue_delay_us = 2000\n")
    detector_input = ort.InferenceSession(str(detector_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    rng = np.random.default_rng(0)
    cases = {
        # (model, file, input, tensor, requests, settle): a tiny model's runs are too short
        # to wake the runtime's threads, a detector's are not.
        "tiny": ("tiny", tiny_path, "x", np.ones((1, 4), np.float32), args.tiny, 0.0),
        "detector 640x640": ("detector", detector_path, detector_input,
                             rng.random((1, 3, 640, 640), dtype=np.float32), args.detector, 0.05),
    }

    table: list[tuple[str, ...]] = []

    def add(case: str, who: str, label: str, value: tuple[float, float, float] | str) -> None:
        if isinstance(value, str):
            table.append((case, f"{who} {label}", value, "", "", ""))
        else:
            p50, p99, raw_p50 = value
            table.append((case, f"{who} {label}", f"{p50:.2f} / {p99:.2f}", f"{raw_p50:.2f}",
                          f"{p50 - raw_p50:+.2f}", f"{(p50 - raw_p50) / raw_p50:+.0%}" if raw_p50 >= 1 else ""))

    server = Server(["--plugins", "oip", "--model-dir", str(models), "--oip-grpc-port", str(grpc_port := free_port()),
                     "--log-level", "warning", *shlex.split(args.server_args)], root / "home")
    mlserver = None
    try:
        server.wait_ready(60)
        if not args.no_mlserver:
            mlserver = start_mlserver(root, {"tiny": tiny_path, "detector": detector_path})
        for case, (name, path, input_name, x, count, settle) in cases.items():
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            req = Requests(name, input_name, x)
            direct = functools.partial(session.run, None, {input_name: x})
            for label, value in measure_server(f"127.0.0.1:{server.port}", f"127.0.0.1:{grpc_port}", name, req,
                                               direct, count, 30, settle).items():
                add(case, "kernel", label, value)
            if mlserver is not None:
                ml_addr = mlserver[1].removeprefix("http://")
                for label, value in measure_server(ml_addr, mlserver[2], name, req, direct, count, 30,
                                                   settle).items():
                    add(case, "MLServer", label, value)
        batched = {
            "tiny": ("tiny", tiny_path, "x", np.ones((1, 4), np.float32)),
            "detector 320x320": ("detector", detector_path, detector_input,
                                 rng.random((1, 3, 320, 320), dtype=np.float32)),
        }
        throughput = {}
        for case, (name, path, input_name, x) in batched.items():
            # The runtime's rate before and after the served run, so drift in the machine's load evens out.
            before = raw_batched(path, input_name, x, args.seconds / 2)
            served = batched_throughput(f"127.0.0.1:{grpc_port}", f"{name}batch", input_name, x,
                                        server.proc.pid, args.seconds)
            raw_rps = (before + raw_batched(path, input_name, x, args.seconds / 2)) / 2
            peer = None if mlserver is None else batched_throughput(
                mlserver[2], name, input_name, x, mlserver[0].pid, args.seconds)
            throughput[case] = (raw_rps, served, peer)
    finally:
        server.stop()
        if mlserver is not None:
            mlserver[0].terminate()
            mlserver[0].wait(10)
        shutil.rmtree(root, ignore_errors=True)

    print("| model | path | p50 / p99 ms | raw p50 ms | added p50 ms | added |\n|---|---|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    for case, (raw_rps, served, peer) in throughput.items():
        print(f"\nbatched throughput, {case}, {CLIENTS} concurrent gRPC clients, {args.seconds:.0f} s each:")
        print(f"- onnxruntime direct, batches of {CLIENTS}: {raw_rps:,.1f} rows/s")
        for who, result in (("kernel (dynamic batching)", served), ("MLServer", peer)):
            if result is None:
                continue
            total = result["server_cpu"] + result["client_cpu"]
            print(f"- {who}: {result['rps']:,.1f} requests/s = {result['rps'] / raw_rps:.1%} of raw batched; "
                  f"CPU {result['server_cpu']:.1f} s server / {result['client_cpu']:.1f} s clients "
                  f"({result['server_cpu'] / total:.0%} server) over {result['elapsed']:.1f} s")


if __name__ == "__main__":
    main()
