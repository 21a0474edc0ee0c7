"""Principals, scopes, signed tokens, and the guard plugins attach to their routes.

The kernel is the one token issuer: HS256 JWTs signed with `--token-secret` (or a secret
generated once and kept in the state directory). A plugin accepts its own protocol's
credential form through the `kernel_authenticate` hook; the kernel asks only the plugin
that owns the route, then falls back to `Authorization: Bearer <jwt>`.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import jwt
import msgspec

from kernel.errors import Forbidden, StartupError, Unauthorized

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.handlers import BaseRouteHandler

    from kernel.app import Kernel

log = logging.getLogger("kernel.auth")

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32
#: Secrets seen in examples and defaults; refused whatever their length.
WEAK_SECRETS = frozenset(
    {"change-me", "changeme", "change_me", "secret", "password", "admin", "test", "default",
     "your-secret-key", "your_secret_key", "supersecret", "jwt-secret", "mysecret", "token"}
)
SECRET_FILE = "token_secret"


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who made a request and what they may do."""

    subject: str
    scopes: frozenset[str] = frozenset()
    #: Which plugin (or `kernel`) vouched for the credential.
    issuer: str = "kernel"

    def allows(self, scope: str) -> bool:
        """True when a scope held covers `scope`: equal, `*`, or a prefix before `:`
        (holding `zoo` allows `zoo:read`)."""
        if "*" in self.scopes or scope in self.scopes:
            return True
        parts = scope.split(":")
        return any(":".join(parts[:i]) in self.scopes for i in range(1, len(parts)))


def check_secret(secret: str) -> None:
    """Refuse secrets that are known, or too short to resist guessing."""
    fix = "pass --token-secret with at least 32 random bytes (e.g. `python -c \"import secrets; print(secrets.token_urlsafe(48))\"`), or omit it to have one generated in the state directory"
    if secret.strip().lower() in WEAK_SECRETS:
        raise StartupError(f"the token secret is a well-known value and anyone could forge tokens; {fix}")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise StartupError(
            f"the token secret is {len(secret.encode())} bytes, under the minimum of {MIN_SECRET_BYTES}; {fix}"
        )


def stored_secret(state_dir: str) -> str:
    """The secret kept in the state directory, generated (mode 0600) on first use.

    A new secret is written whole to a temporary file and linked into place, so a crash or
    a second server starting at the same moment never leaves an empty or half-written one.
    """
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    path = os.path.join(state_dir, SECRET_FILE)
    if not os.path.exists(path):
        _write_new_secret(state_dir, path)
    with open(path, encoding="utf-8") as f:
        secret = f.read().strip()
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise StartupError(
            f"the stored token secret {path} is {len(secret.encode())} bytes, under the minimum of "
            f"{MIN_SECRET_BYTES}; delete the file to have a new one generated (tokens signed with it stop working)"
        )
    return secret


def _write_new_secret(state_dir: str, path: str) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{SECRET_FILE}.", dir=state_dir)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_urlsafe(48) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)  # fails if another process got there first: theirs is used
        except FileExistsError:
            return
        except OSError:  # a file system without hard links
            os.replace(temporary, path)
        log.info("generated a token secret in %s", path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


class TokenIssuer:
    """Issues and verifies the kernel's JWTs."""

    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def issue(
        self, subject: str, scopes: Iterable[str], ttl: float, *, issuer: str = "kernel", **claims: Any
    ) -> str:
        now = int(time.time())
        payload = {
            **claims,
            "sub": subject,
            "scope": " ".join(sorted(set(scopes))),
            "iss": issuer,
            "iat": now,
            "exp": now + int(ttl),
        }
        return jwt.encode(payload, self._key, algorithm=ALGORITHM)

    def verify(self, token: str) -> Principal:
        """The principal a token names; `Unauthorized` for expired, forged or malformed ones.

        The algorithm list is fixed, so `alg: none` and algorithm confusion are rejected,
        and `exp` is required.
        """
        try:
            claims = jwt.decode(
                token, self._key, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Token expired", headers=BEARER) from None
        except jwt.InvalidTokenError:
            raise Unauthorized("Invalid token", headers=BEARER) from None
        scope = claims.get("scope", "")
        if not isinstance(scope, str) or not isinstance(claims["sub"], str):
            raise Unauthorized("Invalid token", headers=BEARER)
        return Principal(
            subject=claims["sub"], scopes=frozenset(scope.split()), issuer=str(claims.get("iss", "kernel"))
        )


BEARER = {"WWW-Authenticate": "Bearer"}
_BEARER_RE = re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE)


def bearer_token(connection: ASGIConnection) -> str | None:
    """The token of an `Authorization: Bearer` header, or None."""
    match = _BEARER_RE.match(connection.headers.get("authorization", ""))
    return match.group(1) if match else None


class Auth:
    """The kernel's auth: its token issuer and how a request's principal is found."""

    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel
        self._issuer: TokenIssuer | None = None

    @property
    def tokens(self) -> TokenIssuer:
        """The token issuer. The kernel refuses a weak configured secret at startup; the
        first use loads or generates the stored one, so plugins that use auth touch it at
        startup (an unwritable state directory then stops the server at once)."""
        if self._issuer is None:
            config = self._kernel.config.kernel
            if config.token_secret is not None:
                check_secret(config.token_secret)
                secret = config.token_secret
            else:
                secret = stored_secret(os.path.expanduser(config.state_dir))
            self._issuer = TokenIssuer(secret)
        return self._issuer

    async def authenticate(self, connection: ASGIConnection, plugin: str | None) -> Principal | None:
        """The principal of a request to a route of `plugin`, or None without credentials.

        The owning plugin's `kernel_authenticate` answers first; then a bearer JWT.
        """
        if plugin is not None:
            answer = self._kernel.plugin_hook(plugin, "kernel_authenticate")(
                request=connection, kernel=self._kernel
            )
            if inspect.isawaitable(answer):
                answer = await answer
            if answer is not None:
                return answer
        token = bearer_token(connection)
        return self.tokens.verify(token) if token else None


def requires(scope: str | None = None):
    """A Litestar guard: 401 without a valid principal, 403 without `scope`.

    The principal is left in `request.user` for the handler.
    """

    async def guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
        kernel: Kernel = connection.app.state["kernel"]
        principal = await kernel.auth.authenticate(connection, handler.opt.get("kernel_plugin"))
        if principal is None:
            raise Unauthorized("Not authenticated", headers=BEARER)
        if scope is not None and not principal.allows(scope):
            raise Forbidden(f"this needs the scope {scope!r}")
        connection.scope["user"] = principal

    guard.__qualname__ = f"requires({scope!r})"
    return guard
