"""A plugin that raises when the server starts."""

import kernel


@kernel.hookimpl
async def kernel_startup(kernel):
    raise RuntimeError("the database at db.invalid is unreachable")
