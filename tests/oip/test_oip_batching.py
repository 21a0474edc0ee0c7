"""Dynamic batching: concurrent requests merged into one runtime call, answers as if alone."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import Server
from tests.oip.oip_models import repository
from tests.oip.oip_support import start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started, _ = start_server(tmp_path_factory.mktemp("home"), repository(tmp_path_factory.mktemp("models")))
    yield started
    started.stop()


def runtime_calls(server: Server, model: str) -> int:
    metrics = httpx.get(server.url + "/-/metrics").text
    match = re.search(rf'kernel_inference_duration_seconds_count{{model="{re.escape(model)}"}} (\S+)', metrics)
    return int(float(match.group(1))) if match else 0


async def infer_all(url: str, model: str, arrays: list[np.ndarray], output: str = "y") -> list[np.ndarray]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async def one(x: np.ndarray) -> np.ndarray:
            body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}],
                    "outputs": [{"name": output}]}
            answer = await client.post(f"/v2/models/{model}/infer", json=body)
            assert answer.status_code == 200, answer.text
            out = answer.json()["outputs"][0]
            return np.array(out["data"], np.float32).reshape(out["shape"])

        return await asyncio.gather(*(one(x) for x in arrays))


@pytest.mark.anyio
async def test_concurrent_requests_share_runtime_calls_and_get_their_own_rows(server):
    arrays = [np.full((1 + i % 2, 4), i, np.float32) for i in range(8)]  # 12 rows: more than one batch
    await infer_all(server.url, "batched", arrays[:1])  # load the model first
    before = runtime_calls(server, "dir.batched")
    results = await infer_all(server.url, "batched", arrays)
    calls = runtime_calls(server, "dir.batched") - before
    assert 2 <= calls < len(arrays)
    for x, got in zip(arrays, results):
        np.testing.assert_array_equal(got, x * 2 + 1)


@pytest.mark.anyio
async def test_models_without_batching_run_each_request(server):
    arrays = [np.full((1, 4), i, np.float32) for i in range(4)]
    await infer_all(server.url, "affine", arrays[:1])
    before = runtime_calls(server, "dir.affine")
    results = await infer_all(server.url, "affine", arrays)
    assert runtime_calls(server, "dir.affine") - before == len(arrays)
    for x, got in zip(arrays, results):
        np.testing.assert_array_equal(got, x * 2 + 1)


@pytest.mark.anyio
async def test_outputs_without_a_batch_dimension_fall_back_to_one_call_each(server):
    arrays = [np.full((1 + i % 3, 4), i, np.float32) for i in range(6)]
    results = await infer_all(server.url, "pooled", arrays, output="total")
    assert [float(r) for r in results] == [float(x.sum()) for x in arrays]
    # two requests of two rows: a batch of four rows, as long as the [4] output
    pairs = [np.arange(8, dtype=np.float32).reshape(2, 4) * (i + 1) for i in range(2)]
    results = await infer_all(server.url, "colsum", pairs, output="total")
    for x, got in zip(pairs, results):
        np.testing.assert_array_equal(got, x.sum(axis=0))
