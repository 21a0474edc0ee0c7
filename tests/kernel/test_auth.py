"""Tokens, secrets and guards: what a forger or a careless operator would try."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
from litestar import Request, get
from litestar.testing import TestClient

import kernel
from kernel.auth import Principal, TokenIssuer, check_secret, stored_secret

SECRET = "k" * 40


def test_a_token_round_trips_with_subject_and_scopes():
    issuer = TokenIssuer(SECRET)
    principal = issuer.verify(issuer.issue("ada", ["oip", "zoo:read"], ttl=60))
    assert principal == Principal(subject="ada", scopes=frozenset({"oip", "zoo:read"}), issuer="kernel")


def test_expired_token_is_refused():
    token = TokenIssuer(SECRET).issue("ada", ["oip"], ttl=-1)
    with pytest.raises(kernel.Unauthorized, match="Token expired"):
        TokenIssuer(SECRET).verify(token)


def test_token_signed_with_another_secret_is_refused():
    token = TokenIssuer("o" * 40).issue("ada", ["oip"], ttl=60)
    with pytest.raises(kernel.Unauthorized, match="Invalid token"):
        TokenIssuer(SECRET).verify(token)


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_alg_none_is_refused():
    claims = {"sub": "root", "scope": "*", "exp": int(time.time()) + 60}
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    with pytest.raises(kernel.Unauthorized, match="Invalid token"):
        TokenIssuer(SECRET).verify(token)


def test_algorithm_confusion_is_refused():
    # HS512 with the right secret is still not the algorithm the kernel issues
    claims = {"sub": "root", "scope": "*", "exp": int(time.time()) + 60}
    token = jwt.encode(claims, SECRET * 2, algorithm="HS512")
    with pytest.raises(kernel.Unauthorized, match="Invalid token"):
        TokenIssuer(SECRET * 2).verify(token)


def test_token_without_expiry_is_refused():
    token = jwt.encode({"sub": "root", "scope": "*"}, SECRET, algorithm="HS256")
    with pytest.raises(kernel.Unauthorized, match="Invalid token"):
        TokenIssuer(SECRET).verify(token)


def test_tampered_payload_is_refused():
    token = TokenIssuer(SECRET).issue("ada", ["read"], ttl=60)
    head, _, sig = token.split(".")
    forged = f"{head}.{_b64({'sub': 'ada', 'scope': '*', 'exp': int(time.time()) + 60})}.{sig}"
    with pytest.raises(kernel.Unauthorized, match="Invalid token"):
        TokenIssuer(SECRET).verify(forged)


def test_scopes_cover_their_sub_scopes_only():
    p = Principal(subject="x", scopes=frozenset({"zoo", "oip:read"}))
    assert p.allows("zoo") and p.allows("zoo:write") and p.allows("oip:read")
    assert not p.allows("oip") and not p.allows("oip:write") and not p.allows("zook")
    assert Principal(subject="x", scopes=frozenset({"*"})).allows("anything")


@pytest.mark.parametrize("secret", ["change-me", "Secret", "password", "tooshort", "x" * 31])
def test_weak_secrets_are_refused_with_a_fix(secret):
    with pytest.raises(kernel.StartupError, match="--token-secret"):
        check_secret(secret)


def test_generated_secret_is_private_and_survives_a_restart(tmp_path):
    first = stored_secret(str(tmp_path / "state"))
    assert len(first) >= 32
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "token_secret").st_mode) == 0o600
    assert stored_secret(str(tmp_path / "state")) == first


def test_servers_starting_together_share_one_whole_secret(tmp_path):
    state = str(tmp_path / "state")
    with ThreadPoolExecutor(8) as pool:
        found = set(pool.map(lambda _: stored_secret(state), range(8)))
    assert len(found) == 1 and len(found.pop()) >= 32
    assert os.listdir(state) == ["token_secret"]  # no temporary file left behind


def test_a_damaged_stored_secret_says_which_file_to_delete(tmp_path):
    (tmp_path / "token_secret").write_text("")
    with pytest.raises(kernel.StartupError, match="token_secret is 0 bytes.*delete the file"):
        stored_secret(str(tmp_path))


@get("/guarded", guards=[kernel.requires("oip:infer")], sync_to_thread=False)
def guarded(request: Request) -> dict:
    return {"subject": request.user.subject}


class Guarded:
    @kernel.hookimpl
    def kernel_routes(self, kernel):
        return [guarded]


@pytest.fixture
def client(tmp_path):
    k = kernel.create_kernel([], extra={"guarded": Guarded()},
                             options={"kernel": {"state_dir": str(tmp_path), "token_secret": SECRET}})
    with TestClient(k.app) as client:
        client.kernel = k
        yield client


@pytest.mark.parametrize(
    ("header", "status", "detail"),
    [
        (None, 401, "Not authenticated"),
        ("Basic Zm9vOmJhcg==", 401, "Not authenticated"),
        ("Bearer not-a-jwt", 401, "Invalid token"),
    ],
)
def test_guard_answers_401_in_the_default_shape(client, header, status, detail):
    answer = client.get("/guarded", headers={"Authorization": header} if header else {})
    assert (answer.status_code, answer.json()) == (status, {"detail": detail})
    assert answer.headers["www-authenticate"] == "Bearer"


def test_guard_answers_401_for_expired_and_403_for_wrong_scope(client):
    tokens = client.kernel.auth.tokens
    expired = tokens.issue("ada", ["oip"], ttl=-5)
    answer = client.get("/guarded", headers={"Authorization": f"Bearer {expired}"})
    assert (answer.status_code, answer.json()) == (401, {"detail": "Token expired"})
    wrong = tokens.issue("ada", ["zoo"], ttl=60)
    answer = client.get("/guarded", headers={"Authorization": f"Bearer {wrong}"})
    assert answer.status_code == 403 and "oip:infer" in answer.json()["detail"]
    right = tokens.issue("ada", ["oip"], ttl=60)
    assert client.get("/guarded", headers={"Authorization": f"Bearer {right}"}).json() == {"subject": "ada"}


def test_secret_never_appears_in_routes(client):
    for path in ("/-/plugins", "/-/models", "/-/metrics", "/openapi.json", "/-/health"):
        assert SECRET not in client.get(path).text
