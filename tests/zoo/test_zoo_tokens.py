"""tokens.json semantics: the first-token bootstrap, both header forms, admin and per-zoo
rights, serialized atomic writes, hand edits, kernel JWTs; and what stops the server at
startup: a corrupt or empty tokens file, a zoo dir that is not a directory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import httpx
import pytest

import kernel
from tests.conftest import Server, run_kernel
from tests.zoo.zoo_archives import write_archive
from tests.zoo.zoo_servers import SECRET, serving_zoo, start_zoo

API = "/zoo/v1/public"


class Zoo:
    def __init__(self, server: Server, root: Path, admin: str) -> None:
        self.server, self.root, self.admin = server, root, admin
        self.http = httpx.Client(base_url=server.url, timeout=30)

    def close(self) -> None:
        self.http.close()

    def new_token(self, zoos: tuple[str, ...] = ()) -> str:
        token = self.http.post(API + "/tokens", headers={"token": self.admin}).json()["token"]
        for zoo in zoos:
            answer = self.http.post(f"{API}/tokens/{zoo}", headers={"token": self.admin, "token_to_modify": token})
            assert answer.status_code == 200, answer.text
        return token

    def tokens_file(self) -> dict:
        return json.loads((self.root / "tokens.json").read_text())


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zoo]:
    base = tmp_path_factory.mktemp("tokens")
    root = base / "zoo"
    for name in ("vision", "private"):
        write_archive(root / "acme" / name, f"m_{name}")
    with serving_zoo(base / "home", root) as (server, admin), closing(Zoo(server, root, admin)) as zoo:
        yield zoo


def test_without_tokens_only_the_first_admin_token_can_be_made(tmp_path: Path) -> None:
    root = tmp_path / "zoo"
    server = start_zoo(tmp_path / "home", root)
    try:
        assert (root / "acme").exists() is False and root.is_dir()  # created when missing
        for method, path in (("GET", "/zoos/acme"), ("GET", "/models/acme/vision"), ("GET", "/tokens"),
                             ("DELETE", "/tokens"), ("POST", "/models/acme/vision")):
            answer = httpx.request(method, server.url + API + path)
            assert answer.status_code == 401, (method, path)
            assert isinstance(answer.json()["detail"], str)
        plain = httpx.post(server.url + API + "/tokens")
        assert plain.status_code == 401
        assert plain.json() == {"detail": "First token should be created with admin rights"}
        assert not (root / "tokens.json").exists()

        made = httpx.post(server.url + API + "/tokens", params={"is_admin": "true"}).json()
        assert made["value"] == {"is_admin": True, "zoos": []}
        assert made["token"].startswith("dg_") and len(made["token"]) == 40
        assert json.loads((root / "tokens.json").read_text()) == {made["token"]: made["value"]}

        again = httpx.post(server.url + API + "/tokens", params={"is_admin": "true"})
        assert again.status_code == 401
        assert again.json() == {"detail": "Token does not have admin rights"}
    finally:
        server.stop()


def test_an_unreadable_is_admin_is_a_422_as_in_fastapi(zoo: Zoo) -> None:
    before = zoo.tokens_file()
    for headers in ({}, {"token": zoo.admin}):
        answer = zoo.http.post(API + "/tokens", params={"is_admin": "maybe"}, headers=headers)
        assert answer.status_code == 422
        assert answer.json() == {"detail": [{"type": "bool_parsing", "loc": ["query", "is_admin"],
                                             "msg": "Input should be a valid boolean, unable to interpret input",
                                             "input": "maybe"}]}
    assert zoo.tokens_file() == before
    # FastAPI's spellings of a boolean, in any case
    made = zoo.http.post(API + "/tokens", params={"is_admin": "Y"}, headers={"token": zoo.admin})
    assert made.status_code == 200 and made.json()["value"]["is_admin"] is True


def test_token_travels_in_either_header(zoo: Zoo) -> None:
    for headers in ({"token": zoo.admin}, {"Authorization": f"Bearer {zoo.admin}"}):
        answer = zoo.http.get(API + "/zoos/acme", headers=headers)
        assert answer.status_code == 200
        assert [z["url"] for z in answer.json()] == ["acme/private", "acme/vision"]
    for headers in ({"token": "dg_wrong"}, {"Authorization": "Bearer dg_wrong"}):
        answer = zoo.http.get(API + "/zoos/acme", headers=headers)
        assert answer.status_code == 401
        assert answer.json() == {"detail": "Token is not valid"}


def test_regular_tokens_read_only_their_zoos(zoo: Zoo) -> None:
    reader = zoo.new_token(("acme/vision",))
    own = {"token": reader}
    assert zoo.http.get(API + "/tokens", headers=own).json() == {
        "token": reader, "value": {"is_admin": False, "zoos": ["acme/vision"]}}
    assert zoo.http.get(API + "/zoos/acme", headers=own).json() == [
        {"name": "vision", "url": "acme/vision", "public": False, "own": False}]
    assert list(zoo.http.get(API + "/models/acme/vision", headers=own).json()) == ["m_vision"]
    assert zoo.http.get("/api/v1/public/zoos-check/acme/vision", headers=own).json() == {}

    refused = zoo.http.get(API + "/models/acme/private", headers=own)
    assert refused.status_code == 401
    assert refused.json() == {"detail": "Token does not have access rights to zoo acme/private"}
    for method, path, extra in (("POST", "/tokens", {}), ("DELETE", "/tokens", {"token_to_delete": reader}),
                                ("POST", "/tokens/acme/private", {"token_to_modify": reader}),
                                ("DELETE", "/models/acme/vision/m_vision", {})):
        answer = zoo.http.request(method, API + path, headers={**own, **extra})
        assert answer.status_code == 401, (method, path)
        assert answer.json() == {"detail": "Token does not have admin rights"}

    admin = {"token": zoo.admin, "token_to_modify": reader}
    twice = zoo.http.post(API + "/tokens/acme/vision", headers=admin)
    assert twice.status_code == 400
    assert twice.json() == {"detail": "Nothing to add: token already has access to acme/vision"}
    removed = zoo.http.delete(API + "/tokens/acme/vision", headers=admin)
    assert removed.json()["value"]["zoos"] == []
    assert zoo.http.get(API + "/models/acme/vision", headers=own).status_code == 401
    gone = zoo.http.delete(API + "/tokens/acme/vision", headers=admin)
    assert gone.json() == {"detail": "Nothing to remove: token already does not have access to acme/vision"}

    deleted = zoo.http.delete(API + "/tokens", headers={"token": zoo.admin, "token_to_delete": reader})
    assert deleted.json() == {"token": reader, "value": {"is_admin": False, "zoos": []}}
    assert reader not in zoo.tokens_file()
    assert zoo.http.get(API + "/zoos/acme", headers=own).status_code == 401
    missing = zoo.http.delete(API + "/tokens", headers={"token": zoo.admin, "token_to_delete": reader})
    assert missing.status_code == 400 and missing.json() == {"detail": "Token does not exist"}
    no_header = zoo.http.delete(API + "/tokens", headers={"token": zoo.admin})
    assert no_header.status_code == 400 and "token_to_delete" in no_header.json()["detail"]
    # the spelling the original reads (FastAPI's headers take hyphens) works too
    hyphens = zoo.new_token()
    deleted = zoo.http.delete(API + "/tokens", headers={"token": zoo.admin, "token-to-delete": hyphens})
    assert deleted.status_code == 200 and hyphens not in zoo.tokens_file()


def test_concurrent_token_changes_lose_no_update(zoo: Zoo) -> None:
    target = zoo.new_token()

    def create(_: int) -> str:
        return zoo.http.post(API + "/tokens", headers={"token": zoo.admin}).json()["token"]

    def grant(i: int) -> int:
        return zoo.http.post(f"{API}/tokens/org{i}/zoo{i}",
                             headers={"token": zoo.admin, "token_to_modify": target}).status_code

    with ThreadPoolExecutor(16) as pool:
        created = list(pool.map(create, range(40)))
        granted = list(pool.map(grant, range(40)))
    assert granted == [200] * 40
    on_disk = zoo.tokens_file()
    assert set(created) <= set(on_disk)
    assert sorted(on_disk[target]["zoos"]) == sorted(f"org{i}/zoo{i}" for i in range(40))
    assert not [p for p in zoo.root.iterdir() if p.name.startswith(".tmp-")]


def test_hand_edits_are_picked_up_and_a_corrupt_edit_is_never_overwritten(zoo: Zoo) -> None:
    path = zoo.root / "tokens.json"
    tokens = zoo.tokens_file()
    tokens["hand-made-token"] = {"is_admin": False, "zoos": ["acme/private"]}
    path.write_text(json.dumps(tokens))
    answer = zoo.http.get(API + "/models/acme/private", headers={"token": "hand-made-token"})
    assert answer.status_code == 200 and list(answer.json()) == ["m_private"]

    path.write_text('{"broken": ')
    # Reads go on with the last good tokens; a change would overwrite the edit, so it is refused.
    assert zoo.http.get(API + "/zoos/acme", headers={"token": "hand-made-token"}).status_code == 200
    refused = zoo.http.post(API + "/tokens", headers={"token": zoo.admin})
    assert refused.status_code == 503 and "tokens.json" in refused.json()["detail"]
    assert path.read_text() == '{"broken": '

    del tokens["hand-made-token"]
    path.write_text(json.dumps(tokens))
    assert zoo.http.get(API + "/zoos/acme", headers={"token": "hand-made-token"}).status_code == 401
    assert zoo.http.post(API + "/tokens", headers={"token": zoo.admin}).status_code == 200


def test_a_file_emptied_by_an_editor_opens_no_bootstrap(zoo: Zoo) -> None:
    path = zoo.root / "tokens.json"
    saved = path.read_text()
    path.write_text("")  # an editor truncates, then writes
    try:
        assert zoo.http.post(API + "/tokens", params={"is_admin": "true"}).status_code == 401
        assert zoo.http.get(API + "/zoos/acme", headers={"token": zoo.admin}).status_code == 200
        assert path.read_text() == ""
    finally:
        path.write_text(saved)
    assert zoo.http.post(API + "/tokens", headers={"token": zoo.admin}).status_code == 200


def test_a_symlinked_tokens_file_is_written_where_it_points(tmp_path: Path) -> None:
    root, secrets = tmp_path / "zoo", tmp_path / "secrets"
    root.mkdir()
    secrets.mkdir()
    (secrets / "tokens.json").write_text(json.dumps({"admin-token": {"is_admin": True, "zoos": []}}))
    (root / "tokens.json").symlink_to(secrets / "tokens.json")
    server = start_zoo(tmp_path / "home", root)
    try:
        made = httpx.post(server.url + API + "/tokens", headers={"token": "admin-token"})
        assert made.status_code == 200, made.text
    finally:
        server.stop()
    assert (root / "tokens.json").is_symlink()
    assert made.json()["token"] in json.loads((secrets / "tokens.json").read_text())


def test_kernel_jwts_with_zoo_scopes_are_accepted(zoo: Zoo) -> None:
    issuer = kernel.TokenIssuer(SECRET)
    admin = issuer.issue("ops", ["zoo"], 60)
    reader = issuer.issue("ci", ["zoo:read:acme/vision"], 60)
    other = issuer.issue("svc", ["oip"], 60)
    assert zoo.http.get(API + "/models/acme/private", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    assert zoo.http.get(API + "/models/acme/vision", headers={"token": reader}).status_code == 200
    assert zoo.http.get(API + "/models/acme/private", headers={"token": reader}).status_code == 401
    assert zoo.http.get(API + "/tokens", headers={"token": reader}).json()["value"] == {
        "is_admin": False, "zoos": ["acme/vision"]}
    assert zoo.http.get(API + "/zoos/acme", headers={"Authorization": f"Bearer {other}"}).status_code == 401
    forged = kernel.TokenIssuer("x" * 48).issue("ops", ["zoo"], 60)
    assert zoo.http.get(API + "/zoos/acme", headers={"token": forged}).status_code == 401


def test_a_corrupt_tokens_file_stops_the_server(tmp_path: Path) -> None:
    root = tmp_path / "zoo"
    root.mkdir()
    (root / "tokens.json").write_text('{"dg_x": {"is_admin": "yes"}}')
    done = run_kernel(["serve", "--plugins", "zoo", "--zoo", str(root), "--port", "0",
                       "--token-secret", SECRET], tmp_path / "home", timeout=30)
    assert done.returncode != 0
    assert "tokens.json is not a valid tokens file" in done.stderr
    assert "Traceback" not in done.stderr
    assert (root / "tokens.json").read_text() == '{"dg_x": {"is_admin": "yes"}}'


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_tokens_file_stops_the_server(tmp_path: Path, content: str) -> None:
    # Taken as no tokens, it would open the first-token bootstrap to anyone.
    root = tmp_path / "zoo"
    root.mkdir()
    (root / "tokens.json").write_text(content)
    done = run_kernel(["serve", "--plugins", "zoo", "--zoo", str(root), "--port", "0",
                       "--token-secret", SECRET], tmp_path / "home", timeout=30)
    assert done.returncode != 0
    assert "tokens.json is not a valid tokens file: the file is empty" in done.stderr
    assert "delete it to start with no tokens" in done.stderr
    assert "Traceback" not in done.stderr and "keeping the last good tokens" not in done.stderr
    assert (root / "tokens.json").read_text() == content


def test_a_zoo_dir_that_is_a_file_stops_the_server(tmp_path: Path) -> None:
    (tmp_path / "zfile").write_text("")
    for root, why in ((tmp_path / "zfile", "is not a directory"),
                      (tmp_path / "zfile" / "zoo", "cannot be created: part of its path is not a directory")):
        done = run_kernel(["serve", "--plugins", "zoo", "--zoo", str(root), "--port", "0",
                           "--token-secret", SECRET], tmp_path / "home", timeout=30)
        assert done.returncode != 0
        assert f"--zoo-dir {root} {why}" in done.stderr, done.stderr
        assert "Errno" not in done.stderr and "Traceback" not in done.stderr
