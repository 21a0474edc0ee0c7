"""Logging: one line per event, text or JSON, each carrying the request id.

The request id comes from the client's `X-Request-ID` header when it is a sane token, or
is generated; it lives in a context variable, so every log line written while a request
is handled (by the kernel, a plugin, or a library) carries it.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
import uuid

import msgspec

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def new_request_id(client_value: str | None) -> str:
    if client_value and _CLIENT_ID_RE.match(client_value):
        return client_value
    return uuid.uuid4().hex[:16]


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    _encoder = msgspec.json.Encoder()

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self._encoder.encode(entry).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)-7s [%(request_id)s] %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """One line per record: control characters in a message (a request path with `%0a`,
    a client's value) are escaped, so no input can forge a log line. Tracebacks still
    follow on lines of their own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        if not record.message.isprintable():
            record.message = _CONTROL_RE.sub(lambda m: repr(m.group())[1:-1], record.message)
        return super().formatMessage(record)


#: Characters that end or rewrite a line on a terminal or in a log file.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    """Send every logger's records to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The kernel writes its own access line with the request id; uvicorn's would lack it.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
