"""`kernel serve --plugins streams` as the README shows it: nothing but pip installs."""

from __future__ import annotations

import time

import httpx

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
