"""The real AIME worker and client interfaces against `kernel serve --plugins jobs`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server
from tests.jobs.aime_helpers import ENDPOINTS, Worker, aime_python, run_client


@pytest.fixture(scope="module")
def python() -> Path:
    return aime_python()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("jobs-home")
    server = Server(["--plugins", "jobs", "--jobs-endpoints", str(ENDPOINTS),
                     "--jobs-job-request-timeout", "2"], home).wait_ready()
    yield server
    server.stop()


def test_queued_before_any_worker_then_real_clients(server: Server, python: Path, tmp_path: Path) -> None:
    # A job sent while no worker is connected waits in the queue.
    early = httpx.post(f"{server.url}/echo", json={"text": "Early", "key": "bob-key", "wait_for_result": False})
    assert early.status_code == 200 and early.json()["success"] is True
    job_id = early.json()["job_id"]
    poll = httpx.get(f"{server.url}/echo/progress", params={"key": "bob-key", "job_id": job_id}).json()
    assert poll["job_state"] == "queued" and poll["progress"]["num_workers_online"] == 0

    worker = Worker(python, server.url, tmp_path / "worker.log")
    try:
        seen = run_client(python, server.url, "alice-key", "Hello", "World", "Again")
        deadline = time.monotonic() + 10
        while True:
            poll = httpx.get(f"{server.url}/echo/progress", params={"key": "bob-key", "job_id": job_id}).json()
            if poll.get("job_state") == "done" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        worker.stop()
    assert poll["job_state"] == "done", worker.output()
    assert poll["job_result"]["text"] == "EARLY"

    assert seen["session_key"]
    first, *others = seen["results"]
    assert first["success"] is True and first["text"] == "HELLO" and first["steps"] == 2
    assert first["ep_version"] == 3 and "#" in first["job_id"]
    assert first["total_duration"] >= first["compute_duration"] >= 0
    assert first["auth"]  # provide_worker_meta_data names the worker
    assert [r["text"] for r in others] == ["world", "again"]
    for updates in seen["progress"]:
        states = [info.get("job_state") for info, _ in updates]
        assert states[-1] == "done"
        partials = [data for info, data in updates if info.get("job_state") == "processing" and data]
        # Progress data is filtered to the endpoint's [PROGRESS.OUTPUTS].
        assert all(set(data) <= {"partial"} for data in partials)
    assert any(data for updates in seen["progress"] for info, data in updates
               if info.get("job_state") == "processing" and data), seen["progress"]


def test_bad_worker_key_stops_the_real_worker(server: Server, python: Path, tmp_path: Path) -> None:
    worker = Worker(python, server.url, tmp_path / "bad-worker.log", key="wrong")
    try:
        deadline = time.monotonic() + 20
        while "Error Event" not in worker.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        output = worker.output()
    finally:
        worker.stop()
    # HTTP 200 {"cmd": "error"}: the interface reports it and stops asking for jobs.
    assert "API server responded with error: Worker" in output and "not authorized on job type echo" in output
    assert "Error Event" in output


def test_long_poll_of_a_vanished_worker_takes_no_job(server: Server) -> None:
    ask = {"job_type": "echo", "auth_key": "worker-key-echo", "auth": "gone", "request_timeout": 60}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/worker_job_request", json=ask, timeout=0.5)
    time.sleep(0.2)
    job_id = httpx.post(f"{server.url}/echo", json={"text": "kept", "key": "bob-key", "wait_for_result": False}
                        ).json()["job_id"]
    taken = httpx.post(f"{server.url}/worker_job_request", json={**ask, "auth": "alive"}, timeout=10).json()
    assert taken["cmd"] == "job" and taken["job_data"][0]["job_id"] == job_id
    # The answer comes before the worker's own timeout, even with nothing to do.
    started = time.monotonic()
    idle = httpx.post(f"{server.url}/worker_job_request", json={**ask, "request_timeout": 1}, timeout=5).json()
    assert idle == {"cmd": "no_job"} and time.monotonic() - started < 1.0
