"""`POST /token` and where PTG's clients put the token: `?token=`, `Authorization`, the cookie."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

from litestar import Request, Response, post
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.params import Body

import kernel
from kernel_streams import params
from kernel_streams.runtime import runtime

log = logging.getLogger("kernel.streams")
SCOPE = "streams"
COOKIE = "authorization"
_SCHEME = re.compile(r"^\s*(\S+)\s+(\S+)\s*$")


def token_of(connection: Any) -> str | None:
    """The token a request carries, looked for where PTG looks: query, header, cookie."""
    token = connection.query_params.get("token")
    if token:
        return token
    for raw in (connection.headers.get("authorization"), connection.cookies.get(COOKIE)):
        if raw:
            match = _SCHEME.match(raw.strip('"'))
            if not match or match.group(1).lower() != "bearer":
                raise kernel.Unauthorized("Not authenticated", headers={"WWW-Authenticate": "Bearer"})
            return match.group(2)
    return None


def authenticate(connection: Any, k: kernel.Kernel) -> kernel.Principal | None:
    token = token_of(connection)
    return k.auth.tokens.verify(token) if token else None


@post("/token", status_code=200, summary="Receive a bearer token as part of OAuth2")
async def issue_token(
    request: Request, data: Annotated[dict[str, Any], Body(media_type=RequestEncodingType.URL_ENCODED)]
) -> Response[dict[str, str]]:
    """Form fields `username` and `password`; answers the token and sets it as a cookie."""
    k: kernel.Kernel = request.app.state["kernel"]
    name, password = data.get("username"), data.get("password")
    if not isinstance(name, str) or not isinstance(password, str):
        raise kernel.BadRequest("form fields username and password are required")
    config = k.config.section("streams")
    asked = params.integer(request.query_params, "exp", None)  # a lifetime in seconds, else a 400
    if not await runtime(request).logins.check(name, password):
        log.info("refused a login for user %r", name[:64])
        raise kernel.Unauthorized("Incorrect username or password", headers={"WWW-Authenticate": "Bearer"})
    ttl = config.token_ttl if asked is None else min(config.token_ttl, asked)
    token = k.auth.tokens.issue(name, [SCOPE], ttl, issuer="streams")
    return Response(
        {"access_token": token, "token_type": "bearer"},
        cookies=[Cookie(key=COOKIE, value=f"Bearer {token}", httponly=True, max_age=ttl, samesite="lax")],
    )
