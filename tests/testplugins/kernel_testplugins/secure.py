"""A plugin whose route needs the `secure` scope, so the kernel's auth is on."""

from litestar import Request, get

import kernel


@get("/secure/whoami", guards=[kernel.requires("secure")])
async def whoami(request: Request) -> dict:
    return {"subject": request.user.subject}


@kernel.hookimpl
def kernel_routes(kernel):
    return [whoami]


@kernel.hookimpl
def kernel_startup(kernel):
    kernel.auth.tokens  # checks (or generates) the secret at startup
