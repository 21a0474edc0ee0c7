"""`kernel serve --plugins streams` as the README shows it: nothing but pip installs."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import Server
from tests.streams.conftest import start_streams


def test_default_serve_starts_an_embedded_valkey_fast_and_keeps_data_across_restarts(tmp_path):
    started = time.monotonic()
    server = start_streams(tmp_path / "home", None, "--streams-dev-login")
    ready = time.monotonic() - started
    try:
        assert "ANY user whose password equals the name" in server.output()
        token = httpx.post(server.url + "/token", data={"username": "u", "password": "u"}).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.post(server.url + "/data/kept", headers=headers, files={"entries": b"one"}).status_code == 201
        assert httpx.get(server.url + "/ping").json() is True
        paths = httpx.get(server.url + "/openapi.json").json()["paths"]
        assert {"/token", "/streams", "/streams/{sid}", "/data/{sid}"} <= set(paths)
    finally:
        server.stop()
    assert ready < 10  # includes interpreter start; the startup budget is checked by bench/startup.py
    again = start_streams(tmp_path / "home", None, "--streams-dev-login")
    try:
        assert httpx.get(again.url + "/data/kept", headers=headers).content == b"one"
    finally:
        again.stop()


def test_every_in_tree_plugin_in_one_process(tmp_path):
    """The last plugin: all five in one serve, each listed in /openapi.json."""
    from kernel.discovery import entry_points

    names = ["zoo", "detect", "oip", "jobs", "streams"]
    missing = [n for n in names if n not in entry_points("kernel.plugins")]
    if missing:
        pytest.skip(f"plugins not installed here: {', '.join(missing)}")
    server = Server(["--plugins", ",".join(names), "--streams-dev-login"], tmp_path / "home").wait_ready()
    try:
        loaded = {p["name"] for p in httpx.get(server.url + "/-/plugins").json() if p.get("kind") == "plugin"}
        assert set(names) <= loaded
        paths = httpx.get(server.url + "/openapi.json").json()["paths"]
        assert "/token" in paths and "/streams" in paths and "/data/{sid}" in paths
        token = httpx.post(server.url + "/token", data={"username": "u", "password": "u"}).json()["access_token"]
        assert httpx.get(server.url + "/streams/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        server.stop()
