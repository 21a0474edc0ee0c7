"""Bad client, worker and config input: AIME's error shapes, nothing lost or delivered twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from litestar.testing import TestClient

import kernel
from tests.jobs.aime_helpers import ENDPOINTS, WORKER_KEY

WORKER = {"job_type": "echo", "auth_key": WORKER_KEY, "auth": "w1", "request_timeout": 1}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    state = tmp_path_factory.mktemp("state")
    k = kernel.create_kernel(["jobs"], options={
        "kernel": {"state_dir": str(state)},
        "jobs": {"endpoints": [str(ENDPOINTS / "echo")], "job_request_timeout": 0.5},
    })
    with TestClient(k.app) as c:
        yield c


def submit(c: TestClient, **inputs) -> dict:
    return c.post("/echo", json={"key": "alice-key", "wait_for_result": False, **inputs}).json()


def test_invalid_inputs_are_all_listed_in_one_400(client: TestClient) -> None:
    r = client.post("/echo", json={"key": "alice-key", "steps": 50, "mode": "sideways", "extra": 1, "scale": 7})
    assert r.status_code == 400
    body = r.json()
    assert body["success"] is False and body["ep_version"] == 3
    text = " ".join(body["error"])
    assert "Invalid input parameter(s): extra" in text and "Missing required argument: text" in text
    assert "steps = 50 is too high" in text and "not in supported values" in text
    assert "scale" not in text  # auto_convert clamps instead
    r = client.post("/echo", json={"key": "alice-key", "text": ["not", "a", "string"]})
    assert r.status_code == 400 and "Expected: string" in r.json()["error"][0]


def test_auto_convert_clamps_and_defaults_fill_in(client: TestClient) -> None:
    submit(client, text="x", scale=7)
    job = client.post("/worker_job_request", json=WORKER).json()
    assert job["cmd"] == "job"
    data = job["job_data"][0]
    assert data["scale"] == 1.0 and data["steps"] == 2 and data["mode"] == "upper"
    assert "key" not in data and "client_session_auth_key" not in data
    assert client.post("/worker_job_result", json={**WORKER, "job_id": data["job_id"], "text": "X"}).json() == {"cmd": "ok"}


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-Infinity", "1e999"])
def test_auto_convert_refuses_numbers_that_are_not_finite(client: TestClient, text: str) -> None:
    # a NaN passes minimum and maximum (every comparison is false) and is no JSON for the worker
    r = client.post("/echo", json={"key": "alice-key", "text": "x", "scale": text, "wait_for_result": False})
    assert r.status_code == 400 and r.json()["error"] == [f"Could not convert scale={text!r} to float!"]


def test_a_number_past_a_float_is_refused(client: TestClient) -> None:
    huge = "1" + "0" * 330  # a JSON integer no float holds
    body = '{"key": "alice-key", "text": "x", "scale": ' + huge + ', "wait_for_result": false}'
    r = client.post("/echo", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"][0].startswith("Could not convert scale=")


def test_client_keys(client: TestClient) -> None:
    bad = client.get("/echo/login", params={"key": "nope"})
    assert bad.status_code == 200 and bad.json()["success"] is False
    r = client.post("/echo", json={"text": "x", "key": "nope"})
    assert r.status_code == 401 and r.json()["success"] is False
    r = client.post("/echo", json={"text": "x", "client_session_auth_key": "forged.token.here"})
    assert r.status_code == 401 and "not registered" in r.json()["error"]
    session = client.get("/echo/login", params={"key": "alice-key"}).json()["client_session_auth_key"]
    r = client.post("/echo", json={"text": "x", "client_session_auth_key": session, "wait_for_result": False})
    assert r.status_code == 200 and r.json()["success"] is True
    assert client.get("/echo/progress", params={"client_session_auth_key": session, "job_id": r.json()["job_id"]}
                      ).json()["job_state"] == "queued"
    drain(client)


def test_a_login_with_a_malformed_body_is_refused_in_a_200(client: TestClient) -> None:
    for body, error in ((b"{", "not valid JSON"), (b"[1]", "must be a JSON object")):
        r = client.post("/echo/login", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200 and r.json()["success"] is False and r.json()["ep_version"] == 3
        assert error in r.json()["error"]


def test_json_nested_too_deeply_is_refused_not_a_server_error(client: TestClient) -> None:
    deep = b"[" * 100_000
    r = client.post("/echo", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]
    r = client.post("/worker_job_request", content=deep, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["cmd"]) == (200, "error") and "nested too deeply" in r.json()["msg"]


def test_polling_other_or_unknown_jobs_is_402(client: TestClient) -> None:
    job_id = submit(client, text="mine")["job_id"]
    for params in ({"key": "bob-key", "job_id": job_id}, {"key": "alice-key", "job_id": "no-such-job"},
                   {"key": "alice-key"}):
        r = client.get("/echo/progress", params=params)
        assert r.status_code == 402 and r.json()["success"] is False
    r = client.get("/echo/progress", params={"key": "alice-key", "job_id": job_id})
    assert r.status_code == 200 and r.json()["job_state"] == "queued"
    drain(client)


def test_unknown_endpoint_and_bad_bodies(client: TestClient) -> None:
    assert client.post("/nope", json={}).status_code == 404
    r = client.post("/echo", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["success"] is False
    r = client.post("/echo", json=[1, 2])
    assert r.status_code == 400


def test_worker_errors_are_http_200_commands(client: TestClient) -> None:
    for body in ({**WORKER, "auth_key": "wrong"}, {**WORKER, "job_type": "nope"}, [1, 2], "text"):
        r = client.post("/worker_job_request", json=body)
        assert r.status_code == 200 and r.json()["cmd"] == "error"
    r = client.post("/worker_job_request", content=b"\x00garbage")
    assert r.status_code == 200 and r.json()["cmd"] == "error"
    r = client.post("/worker_job_result", json={**WORKER, "job_id": "unknown", "text": "x"})
    assert r.status_code == 200 and r.json()["cmd"] == "warning"
    # Progress answers as the original's do, never naming the job (the worker interface would look it up).
    r = client.post("/worker_job_progress", json={**WORKER, "job_id": "unknown", "progress": 5})
    assert r.status_code == 200
    assert r.json() == [{"success": False, "error_msg": "No processing job with job id unknown"}]
    r = client.post("/worker_job_progress", json={**WORKER, "auth_key": "wrong", "job_id": "x"})
    assert r.status_code == 200
    assert r.json() == {"success": False, "error_msg": "Worker w1 not authorized on job type echo"}
    assert client.post("/worker_check_server_status", json={"job_type": "echo", "auth_key": WORKER_KEY}
                       ).json()["key_valid"] is True


def test_result_is_accepted_and_delivered_exactly_once(client: TestClient) -> None:
    job_id = submit(client, text="once")["job_id"]
    client.post("/worker_job_request", json=WORKER)
    assert client.post("/worker_job_result", json={**WORKER, "job_id": job_id, "text": "ONE"}).json() == {"cmd": "ok"}
    second = client.post("/worker_job_result", json={**WORKER, "job_id": job_id, "text": "TWO"})
    assert second.status_code == 200 and second.json()["cmd"] == "warning"
    done = client.get("/echo/progress", params={"key": "alice-key", "job_id": job_id}).json()
    assert done["job_state"] == "done" and done["job_result"]["text"] == "ONE"
    assert client.get("/echo/progress", params={"key": "alice-key", "job_id": job_id}).status_code == 402


def test_worker_key_may_be_a_kernel_token(client: TestClient) -> None:
    k: kernel.Kernel = client.app.state["kernel"]
    token = k.auth.tokens.issue("gpu-box", ["jobs:worker:echo"], 60)
    job_id = submit(client, text="tok")["job_id"]
    job = client.post("/worker_job_request", json={**WORKER, "auth_key": token}).json()
    assert job["cmd"] == "job" and job["job_data"][0]["job_id"] == job_id
    other = k.auth.tokens.issue("gpu-box", ["jobs:worker:other"], 60)
    assert client.post("/worker_job_request", json={**WORKER, "auth_key": other}).json()["cmd"] == "error"
    client.post("/worker_job_result", json={**WORKER, "job_id": job_id, "text": "T"})


def drain(c: TestClient) -> None:
    while (job := c.post("/worker_job_request", json=WORKER).json())["cmd"] == "job":
        for data in job["job_data"]:
            c.post("/worker_job_result", json={**WORKER, "job_id": data["job_id"], "text": ""})


def write_endpoint(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "aime_api_endpoint.cfg"
    path.write_text(text)
    return path


GOOD = '[ENDPOINT]\nname = "{name}"\n[WORKER]\njob_type = "t"\nauth_key = "k"\n'


@pytest.mark.parametrize(("text", "key"), [
    ('[ENDPOINT]\nname = "x"\n', "[WORKER] job_type"),
    (GOOD.format(name="x") + '[INPUTS]\na.type = "tensor"\n', "[INPUTS] a.type"),
    (GOOD.format(name="x") + '[INPUTS]\na.type = "integer"\na.maximum = "ten"\n', "[INPUTS] a.maximum"),
    (GOOD.format(name="bad name"), "[ENDPOINT] name"),
    ('[ENDPOINT]\nname = "x"\nmethods = ["DELETE"]\n', "[ENDPOINT] methods"),
    ('[ENDPOINT\n', "not valid TOML"),
])
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = write_endpoint(tmp_path / "ep", text)
    with pytest.raises(kernel.StartupError) as err:
        _ = kernel.create_kernel(["jobs"], options={"jobs": {"endpoints": [str(tmp_path)]}}).app
    assert str(path) in err.value.detail and key in err.value.detail


@pytest.mark.parametrize("name", [".", "..", "..."])
def test_an_endpoint_name_of_only_dots_is_a_startup_error(tmp_path: Path, name: str) -> None:
    # It matches the name pattern, but `/.` and `/..` never reach the server as such.
    path = write_endpoint(tmp_path / "ep", GOOD.format(name=name))
    with pytest.raises(kernel.StartupError) as err:
        _ = kernel.create_kernel(["jobs"], options={"jobs": {"endpoints": [str(tmp_path)]}}).app
    assert str(path) in err.value.detail and "[ENDPOINT] name" in err.value.detail
    assert "only dots" in err.value.detail


def test_duplicate_endpoint_names_are_a_startup_error(tmp_path: Path) -> None:
    write_endpoint(tmp_path / "one", GOOD.format(name="same"))
    write_endpoint(tmp_path / "two", GOOD.format(name="same"))
    with pytest.raises(kernel.StartupError, match="also the name in"):
        _ = kernel.create_kernel(["jobs"], options={"jobs": {"endpoints": [str(tmp_path)]}}).app


def test_endpoint_colliding_with_another_plugins_route(tmp_path: Path, test_plugins: None) -> None:
    write_endpoint(tmp_path / "hello", GOOD.format(name="hello"))
    with pytest.raises(kernel.StartupError, match=r"route GET /hello is claimed by both plugin 'hello'.* plugin 'jobs'"):
        _ = kernel.create_kernel(["hello", "jobs"], options={"jobs": {"endpoints": [str(tmp_path)]}}).app


def test_endpoints_named_like_fixed_api_routes_keep_those_routes(tmp_path: Path) -> None:
    # `/api/{name}` is an alias of `/api/endpoints/{name}` except where a fixed route has the path.
    names = ["endpoints", "plain", "validate_key"]
    for name in names:
        write_endpoint(tmp_path / "eps" / name, GOOD.format(name=name))
    k = kernel.create_kernel(["jobs"], options={
        "kernel": {"state_dir": str(tmp_path / "state")}, "jobs": {"endpoints": [str(tmp_path / "eps")]}})
    with TestClient(k.app) as c:
        assert sorted(c.get("/api/endpoints").json()["endpoints"]) == names
        assert c.get("/api/validate_key", params={"key": "any"}).json() == {"success": True, "error": None}
        for name in names:
            assert c.get(f"/api/endpoints/{name}").json()["name"] == name
        assert c.get("/api/plain").json() == c.get("/api/endpoints/plain").json()


def test_in_process_model_endpoint(tmp_path: Path, test_plugins: None) -> None:
    models = tmp_path / "models"
    models.mkdir()
    np.save(models / "double.npy", np.eye(2, dtype=np.float32) * 2)
    k = kernel.create_kernel(["jobs"], options={
        "kernel": {"state_dir": str(tmp_path / "state"), "model_dir": [str(models)]},
        "jobs": {"endpoints": [str(ENDPOINTS / "matmul")]},
    })
    with TestClient(k.app) as c:
        r = c.post("/matmul", json={"key": "alice-key", "x": "[[1, 2], [3, 4]]"})
        assert r.status_code == 200 and r.json()["y"] == [[2.0, 4.0], [6.0, 8.0]]
        deep = "[" * 100_000 + "]" * 100_000  # nested past what the JSON decoder takes
        r = c.post("/matmul", json={"key": "alice-key", "x": deep, "wait_for_result": False})
        assert r.status_code == 400 and "has invalid json format" in r.json()["error"][0]
        job_id = c.post("/matmul", json={"key": "alice-key", "x": "[[1, 2, 3]]", "wait_for_result": False}
                        ).json()["job_id"]
        for _ in range(100):
            answer = c.get("/matmul/progress", params={"key": "alice-key", "job_id": job_id}).json()
            if answer["job_state"] == "done":
                break
        assert answer["job_state"] == "done"
        # A job the model cannot run says why, in AIME's `error` output.
        assert "x" in answer["job_result"]["error"] and "y" not in answer["job_result"]


def test_an_endpoint_whose_model_is_missing_starts_with_a_warning(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    # The model may come later (a zoo upload, a rescan), so the server starts and says why
    # the endpoint's jobs fail until then.
    path = write_endpoint(tmp_path / "ep", '[ENDPOINT]\nname = "ghost"\n[WORKER]\nmodel = "nosuchmodel"\n'
                                           '[INPUTS]\nx.type = "json"\n')
    (tmp_path / "models").mkdir()
    k = kernel.create_kernel(["jobs"], options={
        "kernel": {"state_dir": str(tmp_path / "state"), "model_dir": [str(tmp_path / "models")]},
        "jobs": {"endpoints": [str(path)]},
    })
    with TestClient(k.app) as c:
        warnings = [r.getMessage() for r in caplog.records if r.name == "kernel.jobs" and r.levelname == "WARNING"]
        assert warnings == [(f"jobs: endpoint 'ghost' cannot run its jobs yet ([WORKER] model in {path}): "
                             "model 'nosuchmodel' not found")]
        # A job still gets AIME's answer for a failed job: success, with the reason in `error`.
        r = c.post("/ghost", json={"key": "any", "x": "[[1]]"})
        assert r.status_code == 200 and r.json()["success"] is True
        assert r.json()["error"] == "model 'nosuchmodel' not found"
