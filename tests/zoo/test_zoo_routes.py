"""Every model route over real HTTP: listing, check, dictionary, readme, info, download,
upload (with overwrite), delete, and the registry following uploads and deletes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

import kernel
from tests.conftest import Server
from tests.zoo.zoo_archives import LABELS, archive, classifier_onnx, params, write_archive, zip_bytes
from tests.zoo.zoo_servers import SECRET, serving_zoo

API = "/zoo/v1/public"
MODEL = "cls_a"


class Zoo:
    def __init__(self, server: Server, root: Path, admin: str) -> None:
        self.server, self.root = server, root
        self.http = httpx.Client(base_url=server.url, headers={"token": admin}, timeout=30)
        ops = kernel.TokenIssuer(SECRET).issue("ops", ["admin"], 600)
        self.ops = {"Authorization": f"Bearer {ops}"}

    def close(self) -> None:
        self.http.close()

    def upload(self, data: bytes, filename: str, zoo: str = "acme/vision", **query: str) -> httpx.Response:
        return self.http.post(f"{API}/models/{zoo}", files={"file": (filename, data, "application/zip")},
                              params=query)

    def registry(self) -> dict[str, dict]:
        return {m["name"]: m for m in self.http.get("/-/models").json()}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zoo]:
    base = tmp_path_factory.mktemp("routes")
    root = base / "zoo"
    write_archive(root / "acme" / "vision", MODEL)
    (root / "acme" / "vision" / "not_a_model.zip").write_bytes(b"junk")  # skipped, as the original does
    (root / "acme" / "empty").mkdir(parents=True)
    with serving_zoo(base / "home", root) as (server, admin), closing(Zoo(server, root, admin)) as zoo:
        yield zoo


def test_version_system_info_and_zoo_check(zoo: Zoo) -> None:
    assert httpx.get(zoo.server.url + "/zoo/version").json() == {"version": "v1"}
    devices = httpx.get(zoo.server.url + "/devices/api/v1/public/system-info").json()["Devices"]
    assert devices["ONNX/CPU"] == [{"@Index": 0}] and "DUMMY/DUMMY" in devices
    assert zoo.http.get("/api/v1/public/zoos-check/acme/vision").json() == {}
    missing = zoo.http.get("/api/v1/public/zoos-check/acme/nowhere")
    assert missing.status_code == 400 and missing.json() == {"detail": "Zoo acme/nowhere is not found"}


def test_listing_serves_the_params_inside_each_archive(zoo: Zoo) -> None:
    with zipfile.ZipFile(zoo.root / "acme" / "vision" / f"{MODEL}.zip") as z:
        inside = json.loads(z.read(f"{MODEL}/{MODEL}.json"))
    assert zoo.http.get(f"{API}/models/acme/vision").json() == {MODEL: inside}
    assert zoo.http.get(f"{API}/models/acme/vision", params={"short": "true"}).json() == {MODEL: {}}
    # The original has no `short`: a value that is not a boolean is ignored, as it is there.
    assert zoo.http.get(f"{API}/models/acme/vision", params={"short": "maybe"}).json() == {MODEL: inside}
    assert zoo.http.get(f"{API}/models/acme/empty").json() == {}
    assert zoo.http.get(f"{API}/zoos/nobody").json() == []
    missing = zoo.http.get(f"{API}/models/acme/nowhere")
    assert missing.status_code == 400 and missing.json() == {"detail": "Zoo acme/nowhere is not found"}


def test_model_check_dictionary_readme_and_info(zoo: Zoo) -> None:
    base = f"{API}/models/acme/vision/{MODEL}"
    checksum = params(MODEL, classifier_onnx())["Checksum"]
    assert zoo.http.get(base + "/check", params={"checksum": checksum}).json() == {"status": True}
    assert zoo.http.get(base + "/check", params={"checksum": "old"}).json() == {"status": False}
    for model in (MODEL, "nope"):  # FastAPI checks the query before the handler looks for the model
        missing = zoo.http.get(f"{API}/models/acme/vision/{model}/check")
        assert missing.status_code == 422
        assert missing.json() == {"detail": [{"type": "missing", "loc": ["query", "checksum"],
                                              "msg": "Field required", "input": None}]}
    assert zoo.http.get(base + "/dictionary").json() == LABELS
    assert zoo.http.get(base + "/readme").json() == "# A test model\n"
    info = zoo.http.get(base + "/info").json()
    assert info["model_params"]["Checksum"] == checksum and info["crc"] == checksum
    assert info["model_labels"] == info["model_dictionary"] == LABELS
    for suffix in ("", "/info", "/dictionary", "/readme", "/check?checksum=x"):
        missing = zoo.http.get(f"{API}/models/acme/vision/nope{suffix}")
        assert missing.status_code == 400
        assert missing.json() == {"detail": "Model nope is not found in model zoo acme/vision"}
    for path in (f"vision/{MODEL}%0A", f"vision%0A/{MODEL}"):  # a name with a trailing newline is not plain
        answer = zoo.http.get(f"{API}/models/acme/{path}/info")
        assert answer.status_code == 400 and answer.json()["detail"].startswith("invalid "), answer.text


def test_download_streams_the_archive_with_length_and_etag(zoo: Zoo) -> None:
    path = zoo.root / "acme" / "vision" / f"{MODEL}.zip"
    answer = zoo.http.get(f"{API}/models/acme/vision/{MODEL}", headers={"accept": "application/octet-stream"})
    assert answer.status_code == 200
    assert answer.content == path.read_bytes()
    assert answer.headers["content-length"] == str(path.stat().st_size)
    assert answer.headers["content-type"] == "application/octet-stream"
    assert f'filename="{MODEL}.zip"' in answer.headers["content-disposition"]
    assert answer.headers["etag"] == zoo.http.get(f"{API}/models/acme/vision/{MODEL}").headers["etag"]


def test_a_download_resumes_from_a_byte_range(zoo: Zoo) -> None:
    data = (zoo.root / "acme" / "vision" / f"{MODEL}.zip").read_bytes()
    size, url = len(data), f"{API}/models/acme/vision/{MODEL}"
    whole = zoo.http.get(url)
    assert whole.headers["accept-ranges"] == "bytes"

    def get(spec: str, **headers: str) -> httpx.Response:
        return zoo.http.get(url, headers={"range": spec, **headers})

    tail = get("bytes=100-")  # what `curl -C -` and `wget -c` send
    assert tail.status_code == 206 and tail.content == data[100:]
    assert tail.headers["content-range"] == f"bytes 100-{size - 1}/{size}"
    assert tail.headers["content-length"] == str(size - 100)
    assert get("bytes=-10").content == data[-10:]
    assert get("bytes=0-9, 5-20").content == data[:21]  # overlapping spans merge into one
    assert get("bytes=10-19", **{"if-range": whole.headers["etag"]}).content == data[10:20]
    assert get("bytes=10-19", **{"if-range": whole.headers["last-modified"]}).status_code == 206
    # another version named by If-Range, or separate spans: the whole archive, 200
    for changed in (get("bytes=10-19", **{"if-range": '"another"'}), get("bytes=0-9,100-199")):
        assert changed.status_code == 200 and changed.content == data

    beyond = get(f"bytes={size}-")
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"
    for bad in ("bytes=20-10", "lines=0-1", "nonsense", "bytes=a-b"):
        assert get(bad).status_code == 400, bad
    # A refused range leaves nothing half-started behind (a warning would break JSON logs).
    assert "never awaited" not in zoo.server.output()


def test_upload_overwrite_and_delete_change_the_zoo_and_the_registry(zoo: Zoo) -> None:
    name = "cls_new"
    first = archive(name, classifier_onnx(seed=1))
    made = zoo.upload(first, f"{name}.zip")
    assert made.status_code == 201 and made.json() == {"url": f"acme/vision/{name}"}
    assert (zoo.root / "acme" / "vision" / f"{name}.zip").read_bytes() == first
    assert name in zoo.http.get(f"{API}/models/acme/vision").json()
    qualified = f"zoo.acme.vision.{name}"
    assert zoo.registry()[qualified]["backend"] == "onnxruntime"
    loaded = zoo.http.post(f"/-/models/{qualified}/load", headers=zoo.ops)
    assert loaded.status_code == 200, loaded.text

    clash = zoo.upload(archive(name, classifier_onnx(seed=2)), f"{name}.zip")
    assert clash.status_code == 400
    assert clash.json() == {"detail": f"Model {name} already exists in zoo acme/vision"}
    second = archive(name, classifier_onnx(seed=2))
    assert zoo.upload(second, f"{name}.zip", allow_overwrite="true").status_code == 201
    assert zoo.http.get(f"{API}/models/acme/vision/{name}").content == second
    checksum = hashlib.sha256(classifier_onnx(seed=2)).hexdigest()
    assert zoo.http.get(f"{API}/models/acme/vision/{name}/check", params={"checksum": checksum}).json()["status"]
    assert zoo.registry()[qualified]["state"] == "available"  # the changed model reloads on next use

    gone = zoo.http.delete(f"{API}/models/acme/vision/{name}")
    assert gone.status_code == 200 and gone.json() == {"url": f"acme/vision/{name}"}
    assert not (zoo.root / "acme" / "vision" / f"{name}.zip").exists()
    assert name not in zoo.http.get(f"{API}/models/acme/vision").json()
    assert qualified not in zoo.registry()
    again = zoo.http.delete(f"{API}/models/acme/vision/{name}")
    assert again.status_code == 400 and again.json() == {"detail": f"Model {name} is not found in zoo acme/vision"}
    assert zoo.upload(first, f"{name}.zip", zoo="acme/nowhere").json() == {"detail": "Zoo acme/nowhere is not found"}
    assert os.listdir(zoo.root / ".uploads") == []


def test_a_download_in_progress_keeps_the_file_it_started_with(zoo: Zoo) -> None:
    name = "big_blob"

    def blob_archive() -> bytes:
        blob = os.urandom(24 * 1024 * 1024)
        meta = {**params(name, blob, ".bin"), "POST_PROCESS": []}
        return zip_bytes([(f"{name}/{name}.json", json.dumps(meta).encode()), (f"{name}/{name}.bin", blob)],
                         compression=zipfile.ZIP_STORED)

    old, new = blob_archive(), blob_archive()
    assert zoo.upload(old, f"{name}.zip").status_code == 201
    received = io.BytesIO()
    with zoo.http.stream("GET", f"{API}/models/acme/vision/{name}") as answer:
        chunks = answer.iter_bytes(64 * 1024)
        received.write(next(chunks))
        assert zoo.upload(new, f"{name}.zip", allow_overwrite="true").status_code == 201
        assert zoo.http.delete(f"{API}/models/acme/vision/{name}").status_code == 200
        for chunk in chunks:
            received.write(chunk)
    assert received.getvalue() == old


def test_without_the_zero_copy_extension_downloads_are_read_and_sent(tmp_path: Path) -> None:
    """In process (Litestar's test client offers no zero-copy send) the archive is read in
    chunks instead: the same bytes, whole or by range."""
    from litestar.testing import TestClient

    root = tmp_path / "zoo"
    write_archive(root / "acme" / "vision", MODEL)
    (root / "tokens.json").write_text(json.dumps({"t0ken": {"is_admin": True, "zoos": []}}))
    data = (root / "acme" / "vision" / f"{MODEL}.zip").read_bytes()
    k = kernel.create_kernel(["zoo"], options={"kernel": {"state_dir": str(tmp_path / "state")},
                                               "zoo": {"dir": str(root)}})
    with TestClient(k.app) as client:
        url = f"{API}/models/acme/vision/{MODEL}"
        assert client.get(url, headers={"token": "t0ken"}).content == data
        part = client.get(url, headers={"token": "t0ken", "range": "bytes=7-"})
        assert part.status_code == 206 and part.content == data[7:]
