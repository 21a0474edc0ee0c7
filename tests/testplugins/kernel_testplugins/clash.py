"""A plugin claiming a route that the example plugin also serves."""

from litestar import get

import kernel


@get("/hello")
async def hello() -> dict:
    return {}


@kernel.hookimpl
def kernel_routes(kernel):
    return [hello]

