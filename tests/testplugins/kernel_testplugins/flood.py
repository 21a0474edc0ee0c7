"""A plugin with much to send: `GET /flood?mb=N` answers N MiB in one body, and the
WebSocket `/flood/ws?mb=N` sends N messages of 1 MiB, then closes. For clients that stop
reading."""

from litestar import WebSocket, get, websocket
from litestar.response import Response

import kernel

MIB = 1024 * 1024


@get("/flood", sync_to_thread=False)
def flood(mb: int) -> Response[bytes]:
    return Response(b"x" * (mb * MIB), media_type="application/octet-stream")


@websocket("/flood/ws")
async def flood_ws(socket: WebSocket, mb: int) -> None:
    await socket.accept()
    for _ in range(mb):
        await socket.send_bytes(b"x" * MIB)
    await socket.close()


@kernel.hookimpl
def kernel_routes(kernel):
    return [flood, flood_ws]
