"""The model registry with a real (tiny) backend: lazy single-flight loads, states,
unload, LRU eviction, rescans, names, and a full inference queue."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from typing import ClassVar

import numpy as np
import pytest
from litestar import Request, post
from litestar.params import FromPath
from litestar.testing import TestClient

import kernel


class MatrixSession(kernel.Session):
    def __init__(self, weights: np.ndarray, gate: threading.Event | None) -> None:
        self.weights, self.gate = weights, gate
        self.inputs = [kernel.TensorInfo(name="x", datatype="FP32", shape=(-1, weights.shape[0]))]
        self.outputs = [kernel.TensorInfo(name="y", datatype="FP32", shape=(-1, weights.shape[1]))]
        self.memory_bytes = weights.nbytes
        self.closed = False

    def run(self, inputs):
        if self.closed:
            raise RuntimeError("run on a closed session")
        MatrixBackend.priorities["run"] = thread_priority()
        MatrixBackend.threads.append(threading.current_thread().name)
        if self.gate is not None:
            assert self.gate.wait(10)
        return {"y": inputs["x"] @ self.weights}

    def close(self):
        self.closed = True


class MatrixBackend(kernel.Backend):
    """Loads `.npy` weight matrices, slowly, counting its loads."""

    formats = frozenset({"npy"})
    loads: ClassVar[list[str]] = []
    sessions: ClassVar[list[MatrixSession]] = []
    gate: ClassVar[threading.Event | None] = None
    #: When set, the next loads wait for each other here, so that they finish together.
    barrier: ClassVar[threading.Barrier | None] = None
    priorities: ClassVar[dict[str, int]] = {}
    threads: ClassVar[list[str]] = []

    def load(self, spec):
        type(self).priorities["load"] = thread_priority()
        type(self).loads.append(spec.qualified)
        weights = np.load(spec.path).astype(np.float32)
        time.sleep(0.2)  # a load long enough for concurrent first requests to overlap
        barrier = type(self).barrier
        if barrier is not None:
            barrier.wait(10)
            type(self).barrier = None
        session = MatrixSession(weights, type(self).gate)
        type(self).sessions.append(session)
        return session


def thread_priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.fixture
def models(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    for name, factor in (("double", 2), ("triple", 3), ("quad", 4)):
        np.save(folder / f"{name}.npy", factor * np.eye(3))
    (folder / "broken.npy").write_bytes(b"this is not numpy")
    MatrixBackend.loads = []
    MatrixBackend.sessions = []
    MatrixBackend.threads = []
    MatrixBackend.gate = None
    MatrixBackend.barrier = None
    return folder


def make(tmp_path, models, **options):
    return kernel.create_kernel(
        [], backends={"matrix": MatrixBackend},
        options={"kernel": {"state_dir": str(tmp_path / "state"), "model_dir": [str(models)], **options}},
    )


X = {"x": np.ones((1, 3), dtype=np.float32)}


@pytest.mark.anyio
async def test_twenty_concurrent_first_requests_cause_one_load(tmp_path, models):
    k = make(tmp_path, models)
    await k.registry.rescan()
    assert k.registry.get("double").state == "available"
    results = await asyncio.gather(*(k.registry.infer("double", X) for _ in range(20)))
    assert MatrixBackend.loads == ["dir.double"]
    assert all(np.array_equal(r["y"], [[2, 2, 2]]) for r in results)
    assert k.registry.get("dir.double").state == "ready"


@pytest.mark.anyio
@pytest.mark.skipif(sys.platform != "linux", reason="thread priorities are Linux's")
@pytest.mark.parametrize("nice", [None, 5])
async def test_loads_inference_and_offloaded_work_run_below_the_event_loop(tmp_path, models, nice):
    k = make(tmp_path, models, **({} if nice is None else {"infer_nice": nice}))
    steps = 0 if nice is None else nice
    await k.registry.rescan()
    MatrixBackend.priorities = {}
    await k.registry.infer("double", X)
    offloaded = await k.pool.offload(thread_priority)
    here = thread_priority()
    assert MatrixBackend.priorities == {"load": here + steps, "run": here + steps}
    assert offloaded == here + steps
    k.pool.close()


@pytest.mark.anyio
async def test_a_fast_model_runs_on_the_event_loop_after_its_first_run(tmp_path, models):
    k = make(tmp_path, models)
    await k.registry.rescan()
    MatrixBackend.threads = []
    for _ in range(3):
        await k.registry.infer("double", X)
    # a large input goes to the pool however fast the model is
    big = {"x": np.ones((10_000, 3), dtype=np.float32)}
    assert (await k.registry.infer("double", big))["y"].shape == (10_000, 3)
    here = threading.current_thread().name
    assert [name == here for name in MatrixBackend.threads] == [False, True, True, False]
    assert MatrixBackend.threads[0].startswith("kernel-infer")
    k.pool.close()


@pytest.mark.anyio
async def test_a_fast_model_runs_in_the_pool_while_another_of_its_runs_is_going_on(tmp_path, models):
    # Runtimes that run one call at a time lock: an inline run would hold the event loop
    # until the other run ended.
    k = make(tmp_path, models)
    await k.registry.rescan()
    for _ in range(3):
        await k.registry.infer("double", X)  # fast: the next small runs may be inline
    MatrixBackend.threads = []
    gate = MatrixBackend.sessions[0].gate = threading.Event()
    big = asyncio.ensure_future(k.registry.infer("double", {"x": np.ones((10_000, 3), dtype=np.float32)}))
    while not MatrixBackend.threads:
        await asyncio.sleep(0.01)
    small = asyncio.ensure_future(k.registry.infer("double", X))
    while len(MatrixBackend.threads) < 2:
        await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(big, small)
    assert all(name.startswith("kernel-infer") for name in MatrixBackend.threads)
    k.pool.close()


@pytest.mark.anyio
async def test_without_inline_runs_every_run_goes_to_the_pool(tmp_path, models):
    k = make(tmp_path, models, infer_inline_us=0)
    await k.registry.rescan()
    MatrixBackend.threads = []
    for _ in range(3):
        await k.registry.infer("double", X)
    assert all(name.startswith("kernel-infer") for name in MatrixBackend.threads)
    k.pool.close()


@pytest.mark.anyio
async def test_failed_load_is_a_state_with_its_error_and_others_keep_serving(tmp_path, models):
    k = make(tmp_path, models)
    await k.registry.rescan()
    with pytest.raises(kernel.ModelError, match="failed to load"):
        await k.registry.infer("broken", X)
    broken = k.registry.get("broken")
    assert broken.state == "failed" and "ValueError" in broken.error
    assert (await k.registry.infer("triple", X))["y"][0, 0] == 3
    # a later request tries again rather than caching the failure forever
    with pytest.raises(kernel.ModelError):
        await k.registry.infer("broken", X)
    assert MatrixBackend.loads.count("dir.broken") == 2


@pytest.mark.anyio
async def test_wrong_inputs_are_invalid_input_not_a_crash(tmp_path, models):
    k = make(tmp_path, models)
    await k.registry.rescan()
    with pytest.raises(kernel.InvalidInput, match="expected shape"):
        await k.registry.infer("double", {"x": np.ones((1, 4), dtype=np.float32)})
    with pytest.raises(kernel.InvalidInput, match="expected datatype FP32, got INT64"):
        await k.registry.infer("double", {"x": np.ones((1, 3), dtype=np.int64)})
    with pytest.raises(kernel.InvalidInput, match="unknown input 'z'"):
        await k.registry.infer("double", {"z": np.ones((1, 3), dtype=np.float32)})
    with pytest.raises(kernel.InvalidInput, match="missing input 'x'"):
        await k.registry.infer("double", {})
    for dtype in (">f4", "complex64"):  # no datatype of the protocol: still the client's error
        with pytest.raises(kernel.InvalidInput, match="expected datatype FP32"):
            await k.registry.infer("double", {"x": np.ones((1, 3), dtype=dtype)})


@pytest.mark.anyio
async def test_unload_frees_the_session(tmp_path, models):
    k = make(tmp_path, models)
    await k.registry.rescan()
    model = await k.registry.load("double")
    session = model.session
    await k.registry.unload("double")
    assert session.closed and model.state == "available" and model.session is None
    await k.registry.infer("double", X)
    assert MatrixBackend.loads == ["dir.double", "dir.double"]


@pytest.mark.anyio
async def test_least_recently_used_model_is_evicted_past_the_count_limit(tmp_path, models):
    k = make(tmp_path, models, max_models=2)
    await k.registry.rescan()
    await k.registry.infer("double", X)
    await k.registry.infer("triple", X)
    await k.registry.infer("double", X)  # triple is now the least recently used
    await k.registry.infer("quad", X)
    states = {m.spec.name: m.state for m in k.registry.models()}
    assert states == {"double": "ready", "triple": "available", "quad": "ready", "broken": "available"}


@pytest.mark.anyio
async def test_first_requests_for_more_models_than_the_limit_all_get_answers(tmp_path, models):
    # Two loads finishing together: the second evicts the first before its caller's turn,
    # which must load it again rather than run on the closed session.
    k = make(tmp_path, models, max_models=1)
    await k.registry.rescan()
    MatrixBackend.barrier = threading.Barrier(2)
    answers = await asyncio.gather(k.registry.infer("double", X), k.registry.infer("triple", X))
    assert [a["y"].tolist() for a in answers] == [[[2, 2, 2]], [[3, 3, 3]]]
    assert len([m for m in k.registry.models() if m.state == "ready"]) == 1


@pytest.mark.anyio
async def test_sessions_unloaded_twice_during_one_long_run_are_both_closed(tmp_path, models):
    k = make(tmp_path, models, max_models=1)
    await k.registry.rescan()
    gate = MatrixBackend.gate = threading.Event()
    running = asyncio.ensure_future(k.registry.infer("double", X))
    while not MatrixBackend.threads:  # until the run has started
        await asyncio.sleep(0.01)
    MatrixBackend.gate = None  # only that first run waits
    for name in ("triple", "double", "triple"):  # double evicted, loaded again, evicted again
        await k.registry.load(name)
    doubles = [s for s in MatrixBackend.sessions if s.weights[0, 0] == 2]
    assert len(doubles) == 2 and not doubles[0].closed
    gate.set()
    assert (await running)["y"].tolist() == [[2, 2, 2]]
    assert all(s.closed for s in doubles)


@pytest.mark.anyio
async def test_a_model_removed_while_it_loads_is_not_kept_loaded(tmp_path, models):
    k = make(tmp_path, models)
    await k.registry.rescan()
    loading = asyncio.ensure_future(k.registry.load("double"))
    await asyncio.sleep(0.05)
    (models / "double.npy").unlink()
    await k.registry.rescan()
    with pytest.raises(kernel.Unavailable, match="removed or changed while it loaded"):
        await loading
    assert [s.closed for s in MatrixBackend.sessions] == [True]


@pytest.mark.anyio
async def test_byte_limit_evicts_too(tmp_path, models):
    k = make(tmp_path, models, max_model_bytes=40)  # one 3x3 float32 matrix is 36 bytes
    await k.registry.rescan()
    await k.registry.infer("double", X)
    await k.registry.infer("triple", X)
    assert [m.spec.name for m in k.registry.models() if m.state == "ready"] == ["triple"]


@pytest.mark.anyio
async def test_rescan_adds_and_removes_models(tmp_path, models):
    k = make(tmp_path, models)
    await k.registry.rescan()
    await k.registry.load("double")
    session = k.registry.get("double").session
    np.save(models / "five.npy", 5 * np.eye(3))
    (models / "double.npy").unlink()
    await k.registry.rescan()
    names = k.registry.names()
    assert "five" in names and "double" not in names
    assert session.closed
    with pytest.raises(kernel.NotFound):
        k.registry.get("double")


@pytest.mark.anyio
async def test_rescan_reloads_a_model_whose_file_was_replaced(tmp_path, models):
    k = make(tmp_path, models)
    await k.registry.rescan()
    assert (await k.registry.infer("double", X))["y"][0, 0] == 2
    np.save(models / "double.npy", 5 * np.eye(3))
    os.utime(models / "double.npy", ns=(0, 10**18))  # a new time even on coarse clocks
    await k.registry.rescan()
    assert (await k.registry.infer("double", X))["y"][0, 0] == 5
    assert MatrixBackend.sessions[0].closed


@pytest.mark.anyio
@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs a file that fails to read")
async def test_a_model_that_cannot_be_read_hides_no_other(tmp_path, models, caplog):
    (models / "unreadable").mkdir()
    np.save(models / "unreadable" / "model.npy", np.eye(3))
    (models / "unreadable" / "config.toml").symlink_to("/proc/self/mem")  # reading it fails (EIO)
    k = make(tmp_path, models)
    await k.registry.rescan()
    assert {"double", "triple", "quad"} <= set(k.registry.names())
    assert "unreadable" not in k.registry.names()
    assert "model " + str(models / "unreadable") + " skipped" in caplog.text


@pytest.mark.anyio
async def test_versions_from_a_triton_layout(tmp_path):
    repo = tmp_path / "repo"
    for version, factor in (("1", 1), ("2", 2), ("10", 10)):
        (repo / "scale" / version).mkdir(parents=True)
        np.save(repo / "scale" / version / "model.npy", factor * np.eye(3))
    k = make(tmp_path, repo)
    await k.registry.rescan()
    assert k.registry.versions("scale") == ["1", "2", "10"]
    assert (await k.registry.infer("scale", X))["y"][0, 0] == 10
    assert (await k.registry.infer("scale", X, version="2"))["y"][0, 0] == 2
    with pytest.raises(kernel.NotFound, match="no version '3'"):
        k.registry.get("scale", "3")


@post("/run/{name:str}")
async def run(request: Request, name: FromPath[str]) -> dict:
    outputs = await request.app.state["kernel"].registry.infer(name, X)
    return {"y": outputs["y"].tolist()}


class Runner:
    @kernel.hookimpl
    def kernel_routes(self, kernel):
        return [run]


def test_full_inference_queue_answers_503_with_retry_after(tmp_path, models):
    MatrixBackend.gate = threading.Event()
    k = kernel.create_kernel(
        [], extra={"runner": Runner()}, backends={"matrix": MatrixBackend},
        options={"kernel": {"state_dir": str(tmp_path / "s"), "model_dir": [str(models)],
                            "infer_workers": 1, "infer_queue": 0}},
    )
    with TestClient(k.app) as client:
        first: list = []
        worker = threading.Thread(target=lambda: first.append(client.post("/run/double")))
        worker.start()
        deadline = time.monotonic() + 10
        while not k.pool.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = client.post("/run/double")
        MatrixBackend.gate.set()
        worker.join(10)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "queue is full" in busy.json()["detail"]
        assert first[0].json() == {"y": [[2.0, 2.0, 2.0]]}
        assert client.post("/run/double").status_code == 201
        assert client.post("/run/nosuch").status_code == 404
