"""The zoo as the registry's model source: damaged archives copied in by hand are skipped
(never a 500, never a failed scan), and concurrent uploads all reach the registry."""

from __future__ import annotations

import asyncio
import os
import zipfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server
from tests.zoo.zoo_archives import (
    archive,
    damaged,
    encrypted,
    model_members,
    with_method,
    write_archive,
    zip_bytes,
)
from tests.zoo.zoo_servers import serving_zoo

API = "/zoo/v1/public"


class Zoo:
    def __init__(self, server: Server, root: Path, state: Path, admin: str) -> None:
        self.server, self.root, self.state, self.admin = server, root, state, admin
        self.http = httpx.Client(base_url=server.url, headers={"token": admin}, timeout=60)

    def close(self) -> None:
        self.http.close()

    def registry(self, zoo: str) -> dict[str, dict]:
        prefix = f"zoo.{zoo.replace('/', '.')}."
        return {m["name"].removeprefix(prefix): m for m in self.http.get("/-/models").json()
                if m["name"].startswith(prefix)}


def stored(model: str) -> bytes:
    return zip_bytes(model_members(model), compression=zipfile.ZIP_STORED)


#: Archives copied into the zoo by hand whose params cannot be read: never listed.
UNREADABLE = {
    "crc": damaged(stored("crc"), b'"ConfigVersion"'),
    "locked": encrypted(stored("locked"), "locked/locked.json"),
    "deep": zip_bytes([("deep/deep.json", b"[" * 100_000 + b"]" * 100_000), ("deep/deep.onnx", b"x")],
                      compression=zipfile.ZIP_STORED),
}
#: Archives whose params read but whose model file does not: listed, as the original lists
#: them, but not offered to the registry.
NO_BINARY = {
    "d64": with_method(stored("d64"), "d64/d64.onnx", 9),
    "crcbin": damaged(stored("crcbin"), b"classifier"),
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zoo]:
    base = tmp_path_factory.mktemp("registry")
    root, state = base / "zoo", base / "state"
    folder = root / "acme" / "vision"
    write_archive(folder, "good")
    for name, data in (UNREADABLE | NO_BINARY).items():
        (folder / f"{name}.zip").write_bytes(data)
    with (serving_zoo(base / "home", root, "--state-dir", str(state)) as (server, admin),
          closing(Zoo(server, root, state, admin)) as zoo):
        yield zoo


def test_damaged_archives_copied_in_by_hand_are_skipped(zoo: Zoo) -> None:
    listing = zoo.http.get(f"{API}/models/acme/vision")
    assert listing.status_code == 200, listing.text
    assert sorted(listing.json()) == sorted(["good", *NO_BINARY])
    assert zoo.http.get(f"{API}/models/acme/vision/good/info").status_code == 200
    for name in UNREADABLE:
        info = zoo.http.get(f"{API}/models/acme/vision/{name}/info")
        assert info.status_code == 400, info.text
        assert info.json() == {"detail": f"Model {name} is not found in model zoo acme/vision"}
    registry = zoo.registry("acme/vision")
    assert list(registry) == ["good"] and os.path.isfile(registry["good"]["path"])

    log = zoo.server.output()
    assert "failed to scan" not in log
    for name in UNREADABLE:
        assert f"skipping {name}.zip: " in log
    for name in NO_BINARY:
        assert f"model acme/vision/{name} not offered to the registry" in log
    assert not list(zoo.state.rglob("*.partial"))


def test_concurrent_uploads_all_reach_the_registry(tmp_path: Path) -> None:
    root, state = tmp_path / "zoo", tmp_path / "state"
    (root / "acme" / "many").mkdir(parents=True)
    archives = {f"m{i}": archive(f"m{i}", os.urandom(2 * 1024 * 1024)) for i in range(24)}

    async def upload_all(url: str, admin: str) -> list[int]:
        async with httpx.AsyncClient(base_url=url, headers={"token": admin}, timeout=120) as client:
            answers = await asyncio.gather(*[
                client.post(f"{API}/models/acme/many", files={"file": (f"{name}.zip", data)})
                for name, data in archives.items()
            ])
        return [a.status_code for a in answers]

    with (serving_zoo(tmp_path / "home", root, "--state-dir", str(state)) as (server, admin),
          closing(Zoo(server, root, state, admin)) as zoo):
        assert asyncio.run(upload_all(server.url, admin)) == [201] * len(archives)
        # Every upload answered after its rescan: the registry holds every model, each with its file.
        registry = zoo.registry("acme/many")
        assert sorted(registry) == sorted(archives)
        assert [name for name, m in registry.items() if not os.path.isfile(m["path"])] == []
        assert not list(state.rglob("*.partial"))
        assert "not offered to the registry" not in server.output()
