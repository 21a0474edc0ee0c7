"""The real AIME worker and client interfaces against `kernel serve --plugins jobs`."""

from __future__ import annotations

import json
import subprocess
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


def test_real_worker_reports_progress_for_every_job_when_its_result_follows_at_once(
        server: Server, python: Path, tmp_path: Path) -> None:
    # Each job's last report goes right before its result, so the worker interface reads that
    # answer after dropping the job: an answer naming the job failed its look-up there, and the
    # interface never sent progress again.
    worker = Worker(python, server.url, tmp_path / "progress-worker.log", step_seconds=0.3)
    try:
        seen = run_client(python, server.url, "alice-key", "First", "One", "Two", "Three")
    finally:
        worker.stop()
    assert [r["text"] for r in seen["results"]] == ["FIRST", "one", "two", "three"]
    partials = [[data["partial"] for info, data in updates if info.get("job_state") == "processing" and data]
                for updates in seen["progress"]]
    # The server got each later job's reports, and the client saw them while the job ran.
    assert all(partials), (partials, worker.output())
    assert all(text.startswith(p) for text, job in zip(("one", "two", "three"), partials) for p in job), partials


def test_real_client_gets_endpoint_details(server: Server, python: Path) -> None:
    # `ModelAPI.get_endpoint_details` asks `GET /api/{name}`, which the original does not serve.
    code = ("import json, sys; from aime_api_client_interface import ModelAPI; "
            "print(json.dumps(ModelAPI(sys.argv[1], 'echo').get_endpoint_details('echo')))")
    done = subprocess.run([str(python), "-c", code, server.url], check=False, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    details = json.loads(done.stdout.strip().splitlines()[-1])
    assert details["name"] == "echo" and details["enabled"] is True
    assert details == httpx.get(f"{server.url}/api/endpoints/echo").json()


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


WORKER = {"job_type": "echo", "auth_key": "worker-key-echo", "auth": "raw", "request_timeout": 2}


def test_get_submit_reads_inputs_from_the_query_string(server: Server) -> None:
    params = {"key": "alice-key", "text": "Hi", "steps": "3", "scale": "2.5", "mode": "lower",
              "wait_for_result": "false"}
    r = httpx.get(f"{server.url}/echo", params=params)
    assert r.status_code == 200 and r.json()["success"] is True, r.text
    job = httpx.post(f"{server.url}/worker_job_request", json=WORKER, timeout=10).json()
    assert job["cmd"] == "job"
    data = job["job_data"][0]
    assert data["job_id"] == r.json()["job_id"]
    # Numbers come typed from their text; limits and auto_convert apply as for JSON.
    assert (data["text"], data["steps"], data["scale"], data["mode"]) == ("Hi", 3, 1.0, "lower")
    httpx.post(f"{server.url}/worker_job_result", json={**WORKER, "job_id": data["job_id"], "text": "hi"})
    done = httpx.get(f"{server.url}/echo/progress", params={"key": "alice-key", "job_id": data["job_id"]}).json()
    assert done["job_state"] == "done" and done["job_result"]["text"] == "hi"

    bad = httpx.get(f"{server.url}/echo", params={"key": "alice-key", "text": "x", "steps": "three", "scale": "nan"})
    assert bad.status_code == 400 and bad.json()["success"] is False
    assert [e.split("=")[0] for e in bad.json()["error"]] == ["Invalid argument type steps", "Invalid argument type scale"]
    # An endpoint whose `methods` leave out GET does not take GET submits.
    assert httpx.get(f"{server.url}/limited", params={"key": "alice-key"}).status_code == 405
    assert httpx.post(f"{server.url}/limited", json={"key": "alice-key", "wait_for_result": False}).status_code == 200


def test_real_worker_takes_queued_jobs_as_one_batch(server: Server, python: Path, tmp_path: Path) -> None:
    ids = [httpx.post(f"{server.url}/echo", json={"text": f"b{i}", "key": "bob-key", "wait_for_result": False})
           .json()["job_id"] for i in range(3)]
    worker = Worker(python, server.url, tmp_path / "batch-worker.log", max_batch=4)
    try:
        answers = []
        for job_id in ids:
            deadline = time.monotonic() + 15
            while (answer := httpx.get(f"{server.url}/echo/progress", params={"key": "bob-key", "job_id": job_id}
                                       ).json()).get("job_state") != "done" and time.monotonic() < deadline:
                time.sleep(0.2)
            answers.append(answer)
    finally:
        worker.stop()
    assert [a.get("job_result", {}).get("text") for a in answers] == ["B0", "B1", "B2"], worker.output()
    # All three were waiting, so the first request of up to four got all of them.
    batches = [line for line in worker.output().splitlines() if line.startswith("batch ")]
    assert batches[:1] == ["batch 3"], worker.output()
