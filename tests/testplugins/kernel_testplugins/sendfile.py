"""A plugin that answers with a file through the ASGI zero-copy send extension, where the
server offers it: `GET /sendfile?offset=&count=` sends that part of the file named by
`KERNEL_TEST_SENDFILE`, `&chunked=true` without a Content-Length."""

import os

from litestar import Request, get
from litestar.enums import ASGIExtension
from litestar.response import Response
from litestar.types import Receive, Scope, Send

import kernel

ZEROCOPY_SEND = ASGIExtension.ZERO_COPY_SEND_EXTENSION.value


class _FilePart:
    def __init__(self, offset: int, count: int, chunked: bool) -> None:
        self.offset, self.count, self.chunked = offset, count, chunked

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        offered = ZEROCOPY_SEND in (scope.get("extensions") or {})
        headers = [(b"x-zerocopy", b"offered" if offered else b"absent")]
        if not self.chunked:
            headers.append((b"content-length", str(self.count).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        with open(os.environ["KERNEL_TEST_SENDFILE"], "rb") as file:
            if offered:
                await send({"type": ZEROCOPY_SEND, "file": file, "offset": self.offset, "count": self.count})
            else:
                file.seek(self.offset)
                await send({"type": "http.response.body", "body": file.read(self.count)})


class FilePart(Response):
    def __init__(self, offset: int, count: int, chunked: bool) -> None:
        super().__init__(None)
        self.part = _FilePart(offset, count, chunked)

    def to_asgi_response(self, *args: object, **kwargs: object) -> _FilePart:  # type: ignore[override]
        return self.part


@get("/sendfile", sync_to_thread=False)
def part(request: Request, offset: int = 0, count: int | None = None, chunked: bool = False) -> FilePart:
    size = os.path.getsize(os.environ["KERNEL_TEST_SENDFILE"])
    return FilePart(offset, size - offset if count is None else count, chunked)


@kernel.hookimpl
def kernel_routes(kernel):
    return [part]
