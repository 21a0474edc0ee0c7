"""PTG's REST routes: `/streams` (list, info, metadata, delete) and `/data/{sid}` (read, append)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import multipart
from litestar import Request, Response, delete, get, post, put
from litestar.params import Body, FromPath

import kernel
from kernel_streams import framing, params
from kernel_streams.budget import Budget
from kernel_streams.runtime import Runtime, runtime

GUARD = [kernel.requires("streams")]


@get("/ping", summary="Send a ping to health-check the data store")
async def ping(request: Request) -> bool:
    return await runtime(request).store.ping()


@get("/streams/", guards=GUARD, summary="Get available streams")
async def list_streams(request: Request) -> list[Any]:
    store = runtime(request).store
    sids = await store.list_streams()
    if params.flag(request.query_params, "info"):
        return await store.info(sids)
    return sids


@get("/streams/{sid:str}", guards=GUARD, summary="Get information of a stream")
async def stream_info(request: Request, sid: FromPath[str]) -> dict[str, Any]:
    (info,) = await runtime(request).store.info([framing.check_stream_id(sid)])
    if "error" in info and params.flag(request.query_params, "report_error"):
        raise kernel.BadRequest(info["error"])
    return info


@put("/streams/{sid:str}", guards=GUARD, summary="Update a stream's metadata")
async def update_stream(request: Request, sid: FromPath[str],
                        data: Annotated[dict[str, Any], Body()]) -> Response[bytes]:
    """Merge the JSON body into the stream's metadata (replace it with `override=true`);
    answers the stored metadata as JSON text, as PTG does."""
    override = params.flag(request.query_params, "override")
    max_len = data.get("max_len")
    if max_len is not None and (not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1):
        raise kernel.BadRequest("max_len must be a positive integer")
    stored = await runtime(request).store.set_meta(framing.check_stream_id(sid), data, update=not override)
    return Response(msgspec.json.encode(stored), media_type="application/json")


@delete("/streams/{sid:str}", guards=GUARD, status_code=200, summary="Delete a stream")
async def delete_stream(request: Request, sid: FromPath[str]) -> list[int]:
    return await runtime(request).store.delete(framing.split_stream_ids(sid))


def cursors(sids: list[str], last_entry_id: str) -> dict[str, str]:
    """{stream: id} from `last_entry_id`: one id for all, or one per stream split on `+` or space."""
    ids = [i for i in last_entry_id.replace(" ", "+").split("+")] or ["*"]
    out = {}
    for n, sid in enumerate(sids):
        value = ids[n % len(ids)]
        if value == "-":
            value = "0"
        if value not in ("*", "$") and not framing.is_entry_id(value):
            raise kernel.BadRequest(f"invalid last_entry_id {value[:40]!r}: expected *, $, -, <ms> or <ms>-<seq>")
        out[sid] = value
    return out


@get("/data/{sid:str}", guards=GUARD, summary="Retrieve data from one or multiple streams")
async def read_entries(request: Request, sid: FromPath[str]) -> Response[bytes]:
    """`count` entries per stream after `last_entry_id` (`*`, the default: the latest ones),
    fewer where they would pass `max_bytes`; the body is the entries back to back, the
    header `entry-offset` says where each starts."""
    rt: Runtime = runtime(request)
    sids = framing.split_stream_ids(sid)
    count = params.integer(request.query_params, "count", 1, high=rt.config.max_count)
    last = cursors(sids, request.query_params.get("last_entry_id") or "*")
    star = [s for s in sids if last[s] == "*"]
    after = {s: v for s, v in last.items() if v != "*"}
    budget = Budget(rt.config.max_bytes, sids, rt.store.entry_sizes, by_chance=True)
    newest = await budget.read(lambda n: rt.store.latest(star, n), count) if star else []
    oldest = await budget.read(lambda n: rt.store.read(after, n), count) if after else []
    # the newest of the `*` streams' entries are the ones to keep, the oldest of the others'
    kept = budget.fit([*reversed(newest), *oldest])
    entries = [e for e in reversed(kept) if e[0] not in after] + [e for e in kept if e[0] in after]
    header, blob = framing.pack(entries)
    return Response(blob, media_type="application/octet-stream", headers={"entry-offset": header.decode()})


async def _file_parts(request: Request) -> list[tuple[str, str, bytearray]]:
    """(field name, file name, data) of each multipart file part, in the order the parts
    arrive: Litestar's `form()` groups parts by field name, which loses that order."""
    boundary = request.content_type[1].get("boundary")
    if not boundary:
        raise kernel.BadRequest("multipart boundary missing in Content-Type")
    parts: list[tuple[str, str, bytearray]] = []
    data: bytearray | None = None
    try:
        with multipart.PushMultipartParser(boundary, max_segment_count=request.app.multipart_form_part_limit) as parser:
            async for chunk in request.stream():
                for event in parser.parse(chunk):
                    if isinstance(event, multipart.MultipartSegment):
                        data = None
                        if event.filename:  # a file, as Litestar tells them; other parts are fields
                            data = bytearray()
                            parts.append((event.name or "", event.filename, data))
                    elif event and data is not None:
                        data += event
    except multipart.MultipartError as exc:
        raise kernel.BadRequest(f"invalid multipart/form-data: {exc}") from None
    return parts


@post("/data/{sid:str}", guards=GUARD, summary="Send data to one or multiple streams")
async def append_entries(request: Request, sid: FromPath[str]) -> list[str]:
    """Multipart file parts become entries, in order. For one stream every part goes there;
    for `*` (or `a+b`) each part's file name names its stream."""
    rt = runtime(request)
    targets = None if sid == "*" else framing.split_stream_ids(sid)
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise kernel.BadRequest("send entries as multipart/form-data parts")
    entries = []
    for field, filename, data in await _file_parts(request):
        if targets is not None and len(targets) == 1:
            stream = targets[0]
        else:
            stream = framing.check_stream_id(filename)
            if targets is not None and stream not in targets:
                raise kernel.BadRequest(f"part {field!r} names stream {stream!r}, not one of {sid!r}")
        entries.append((stream, "*", data))
    if not entries:
        raise kernel.BadRequest("no entries: send each entry as a multipart file part")
    return await rt.store.add(entries)


ROUTES = [ping, list_streams, stream_info, update_stream, delete_stream, read_entries, append_entries]
