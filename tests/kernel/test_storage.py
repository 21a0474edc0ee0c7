"""The file storage driver: atomic writes, hostile keys, streaming."""

from __future__ import annotations

import os

import pytest

import kernel
from kernel.storage import FileStorage


@pytest.fixture
def store(tmp_path):
    return kernel.create_kernel([], options={"kernel": {"state_dir": str(tmp_path / "s")}}).storage(
        f"file://{tmp_path / 'objects'}"
    )


def test_write_read_list_delete(store):
    assert store.write("org/zoo/model.zip", b"PK...") == 5
    store.write("org/zoo/other.zip", [b"a" * 10, b"b" * 5])
    assert store.read("org/zoo/model.zip") == b"PK..."
    assert store.list() == ["org/zoo/model.zip", "org/zoo/other.zip"]
    assert store.list("org/zoo/o") == ["org/zoo/other.zip"]
    assert b"".join(store.stream("org/zoo/other.zip", chunk_size=4)) == b"a" * 10 + b"b" * 5
    assert store.local_path("org/zoo/model.zip").read_bytes() == b"PK..."
    assert store.delete("org/zoo/model.zip") and not store.delete("org/zoo/model.zip")
    with pytest.raises(kernel.NotFound):
        store.read("org/zoo/model.zip")
    with pytest.raises(kernel.NotFound):
        store.stream("nothing")


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/etc/passwd", "a\x00b", "a\\..\\b", "", "a//b", "./a",
                                 ".tmp-x", "a/.tmp-b/c"])
def test_keys_that_could_escape_are_rejected(store, key):
    with pytest.raises(kernel.InvalidKey):
        store.write(key, b"x")
    with pytest.raises(kernel.InvalidKey):
        store.read(key)


def test_an_object_and_a_prefix_of_one_name_clash_without_a_server_error(store):
    store.write("a/b", b"x")
    for key in ("a", "a/b/c"):  # a prefix of a/b; a key under the object a/b
        with pytest.raises(kernel.Conflict):
            store.write(key, b"y")
        assert not store.delete(key)
        with pytest.raises(kernel.NotFound):
            store.read(key)
    assert store.list() == ["a/b"] and store.read("a/b") == b"x"


def test_a_symlink_out_of_the_root_is_rejected(store, tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"secret")
    os.symlink(tmp_path / "outside", store.root / "link")
    with pytest.raises(kernel.InvalidKey):
        store.read("link/secret")


def test_a_failed_write_keeps_the_old_object_and_leaves_no_debris(store):
    store.write("model.zip", b"old")

    def chunks():
        yield b"new-part"
        raise OSError("client went away")

    with pytest.raises(OSError):
        store.write("model.zip", chunks())
    assert store.read("model.zip") == b"old"
    assert sorted(os.listdir(store.root)) == ["model.zip"]


def test_unknown_scheme_is_a_clear_error(tmp_path):
    k = kernel.create_kernel([], options={"kernel": {"state_dir": str(tmp_path)}})
    with pytest.raises(kernel.StartupError, match="unknown storage 'nosuch'"):
        k.storage("nosuch://x")
    assert isinstance(k.storage(str(tmp_path / "plain")), FileStorage)
