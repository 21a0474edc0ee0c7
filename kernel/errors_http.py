"""Turning exceptions into JSON error responses, in an error shape a plugin chooses.

The kernel's default shape is `{"detail": "..."}`. A plugin whose protocol answers errors
differently (OIP's `{"error": ...}`) passes its own shape to `error_handlers` and sets the
result on the router it returns. No stack trace ever reaches a client: unexpected
exceptions are logged with the request id and answered with a plain 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from kernel.errors import KernelError

log = logging.getLogger("kernel.errors")

#: (status code, message) -> response body
ErrorShape = Callable[[int, str], Any]


def detail_shape(status: int, message: str) -> dict[str, str]:
    return {"detail": message}


def describe(exc: Exception) -> tuple[int, str, dict[str, str]]:
    """Status code, client-safe message and headers for an exception."""
    if isinstance(exc, KernelError):
        return exc.status_code, exc.detail, exc.headers
    if isinstance(exc, HTTPException):
        message = exc.detail
        if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
            problems = [
                f"{e.get('key') or e.get('source') or 'body'}: {e.get('message')}"
                for e in exc.extra if isinstance(e, dict)
            ]
            if problems:
                message = f"{message}: {'; '.join(problems)}"
        return exc.status_code, message, dict(exc.headers or {})
    if isinstance(exc, UnicodeDecodeError):
        # What Litestar's JSON decoding (msgspec) raises for a body that is not UTF-8.
        return 400, f"the request body is not valid UTF-8 ({exc.reason})", {}
    if isinstance(exc, RecursionError):
        # What json and msgspec raise for arrays or objects nested deeper than Python's
        # recursion limit (`[[[[...`), in Litestar's decoding or a plugin's.
        return 400, "the request body is nested too deeply", {}
    return 500, "Internal server error", {}


def error_handlers(shape: ErrorShape = detail_shape) -> dict[type[Exception], Callable[..., Response]]:
    """Litestar exception handlers answering every error in `shape`."""

    def handle(request: Request, exc: Exception) -> Response:
        status, message, headers = describe(exc)
        if status >= 500 and not isinstance(exc, KernelError):
            log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        elif status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, message)
        return Response(shape(status, message), status_code=status, headers=headers)

    return {Exception: handle}
