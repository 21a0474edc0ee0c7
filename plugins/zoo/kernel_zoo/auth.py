"""Who may do what: `tokens.json` tokens as kernel principals, and the zoo's guards.

A token travels in the `token` header (what PySDK sends) or as `Authorization: Bearer`.
An admin token holds the scope `zoo` (everything); a regular token holds `zoo:read:<org>/<zoo>`
for each zoo it lists. The kernel's own JWTs are accepted too, in either header: scope `zoo`
is an admin, `zoo:read` reads every zoo, `zoo:read:<org>/<zoo>` one zoo (mint them with
`kernel token --scope ...`). Refusals are 401 with the original server's messages, since
PySDK turns a 401 into its "Unable to connect" error.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

import kernel

if TYPE_CHECKING:
    from kernel_zoo.tokens import TokenStore, TokenValue

ADMIN = "zoo:admin"


def read_scope(org: str, zoo: str) -> str:
    return f"zoo:read:{org}/{zoo}"


def credential(connection: ASGIConnection) -> str | None:
    """The token of a request: the `token` header, else a bearer token."""
    return connection.headers.get("token") or kernel.bearer_token(connection)


def principal_of(token: str, value: TokenValue) -> kernel.Principal:
    scopes = {"zoo"} if value.is_admin else {read_scope(*z.split("/", 1)) for z in value.zoos if "/" in z}
    # Never the token itself: the subject shows up in logs.
    subject = "zoo-token:" + hashlib.sha256(token.encode()).hexdigest()[:12]
    return kernel.Principal(subject=subject, scopes=frozenset(scopes), issuer="zoo")


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and not token.startswith("dg_")


def authenticate(connection: ASGIConnection, k: kernel.Kernel, store: TokenStore) -> kernel.Principal | None:
    token = credential(connection)
    if not token:
        return None
    value = store.get(token)
    if value is not None:
        return principal_of(token, value)
    if _looks_like_jwt(token):
        principal = k.auth.tokens.verify(token)
        if not any(s in ("zoo", "*") or s.startswith("zoo:") for s in principal.scopes):
            raise kernel.Unauthorized("Token does not have access to the zoo")
        return principal
    raise kernel.Unauthorized("Token is not valid")


def _principal(connection: ASGIConnection) -> kernel.Principal:
    return connection.scope["user"]  # type: ignore[return-value]


async def admin(connection: ASGIConnection, _handler: BaseRouteHandler) -> None:
    """After `kernel.requires()`: the principal must be an admin."""
    if not _principal(connection).allows(ADMIN):
        raise kernel.Unauthorized("Token does not have admin rights")


async def zoo_reader(connection: ASGIConnection, _handler: BaseRouteHandler) -> None:
    """After `kernel.requires()`: the principal must read the zoo named in the path."""
    org, zoo = connection.path_params["organization"], connection.path_params["zoo_name"]
    if not _principal(connection).allows(read_scope(org, zoo)):
        raise kernel.Unauthorized(f"Token does not have access rights to zoo {org}/{zoo}")


def zoos_of(principal: kernel.Principal, org: str, zoos: list[str]) -> list[str]:
    return [z for z in zoos if principal.allows(read_scope(org, z))]
