"""Receiving an uploaded archive: a multipart body streamed to a temporary file.

The body is parsed as it arrives (never held in memory) and counted, so an upload over
the limit is refused as soon as it crosses it. The caller checks the file and renames it
into the zoo; whatever goes wrong, the temporary file is removed.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import msgspec
from litestar import Request
from litestar.exceptions import InternalServerException
from multipart import MultipartSegment, ParserError, PushMultipartParser, parse_options_header

import kernel
from kernel_zoo.archives import check_name
from kernel_zoo.tree import EXT

FIELD = "file"
_BUFFER = 1024 * 1024


class Received(msgspec.Struct):
    temp: Path
    model: str
    size: int


def _model_name(filename: str | None) -> str:
    if not filename:
        raise kernel.BadRequest(f"form field {FIELD!r} must be a file named <model>{EXT}")
    if "/" in filename or "\\" in filename or not filename.endswith(EXT):
        raise kernel.BadRequest(f"uploaded file name {filename!r} must be a plain <model>{EXT}")
    return check_name("model", filename[: -len(EXT)])


def _too_large(limit: int) -> kernel.PayloadTooLarge:
    return kernel.PayloadTooLarge(f"upload is larger than the limit of {limit} bytes")


async def receive(request: Request, folder: Path, limit: int) -> Received:
    """Stream the `file` field of a multipart upload into a new file in `folder`."""
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    if ctype != "multipart/form-data" or not options.get("boundary"):
        raise kernel.BadRequest(f"upload the model archive as multipart/form-data field {FIELD!r}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    temp = folder / f"{uuid.uuid4().hex}.part"
    out = None
    model: str | None = None
    size = total = 0
    in_file = False
    try:
        with PushMultipartParser(options["boundary"], max_segment_count=64) as parser:
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise _too_large(limit)
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        in_file = event.name == FIELD
                        if in_file:
                            if model is not None:
                                raise kernel.BadRequest(f"form field {FIELD!r} appears twice")
                            model = _model_name(event.filename)
                            out = open(temp, "xb", buffering=_BUFFER)  # noqa: SIM115, ASYNC230 - closed below; creating a file is quick
                    elif event is None:
                        in_file = False
                    elif in_file and out is not None:
                        out.write(event)
                        size += len(event)
            for _ in parser.parse(b""):
                pass
        if model is None or out is None:
            raise kernel.BadRequest(f"missing form field {FIELD!r} with the model archive")
        await asyncio.to_thread(_seal, out)
        return Received(temp=temp, model=model, size=size)
    except ParserError as exc:
        _discard(out, temp)
        raise kernel.BadRequest(f"malformed multipart body: {exc}") from None
    except InternalServerException:
        # Litestar's word for a client that went away mid-body: not the server's fault.
        _discard(out, temp)
        raise kernel.BadRequest("the upload was cut off before it finished") from None
    except BaseException:
        _discard(out, temp)
        raise


def _seal(out) -> None:
    out.flush()
    os.fsync(out.fileno())
    out.close()


def _discard(out, temp: Path) -> None:
    if out is not None:
        out.close()
    temp.unlink(missing_ok=True)
