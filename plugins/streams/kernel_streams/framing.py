"""PTG's wire framing: stream and entry ids, batch headers of pushes, packed batches of pulls.

A push batch is a JSON header then one binary blob. The header lists one item per entry:
an offset, `[stream, offset]` or `[stream, entry_id, offset]`. ptgctl sends cumulative END
offsets; PTG's README shows START offsets beginning at 0. A header whose first offset is 0
is read as start offsets, any other as end offsets (which must end at the blob's length).
A pull batch is the header `[[stream, entry_id, start_offset], ...]` then the blob.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

import kernel

#: Redis stream entry ids: `<ms>-<seq>`, or `<ms>` alone.
_ENTRY_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")
#: Ids a client may give XADD: explicit ones, `<ms>-*`, and `*` (Redis picks).
_ADD_ID = re.compile(r"^(\*|\d{1,20}(-(\d{1,20}|\*))?)$")
#: Both parts of an entry id are unsigned 64-bit numbers in Redis.
_MAX_PART = 2**64 - 1
_MAX_SID = 256
#: The prefix of the keys that hold streams' metadata (`XMETA:<stream>`, as PTG keeps them).
META_PREFIX = "XMETA:"


class BadFrame(kernel.BadRequest):
    """A push message that does not follow PTG's framing."""


def check_stream_id(sid: str) -> str:
    """A stream id: printable, at most `_MAX_SID` characters, no `+` (the separator), no whitespace, not `*`."""
    if len(sid) > _MAX_SID:
        raise kernel.BadRequest(f"invalid stream id {sid[:40]!r}...: {len(sid)} characters, at most {_MAX_SID}")
    if not sid or sid == "*" or "+" in sid or not sid.isprintable() or any(c.isspace() for c in sid):
        raise kernel.BadRequest(f"invalid stream id {sid!r}")
    if sid.startswith(META_PREFIX):
        # the key of another stream's metadata: writing that metadata would replace the stream
        raise kernel.BadRequest(f"invalid stream id {sid!r}: ids starting with {META_PREFIX} are reserved")
    return sid


def _fits(entry_id: str) -> bool:
    return all(part == "*" or int(part) <= _MAX_PART for part in entry_id.split("-"))


def is_entry_id(value: str) -> bool:
    """An explicit entry id, `<ms>-<seq>` or `<ms>`, each part an unsigned 64-bit number."""
    return bool(_ENTRY_ID.match(value)) and _fits(value)


def id_before(entry_id: str) -> str:
    """The largest entry id below `entry_id` (`0-0` below the smallest): reading after it starts at `entry_id`."""
    ms, _, seq = entry_id.partition("-")
    if int(seq or 0):
        return f"{ms}-{int(seq) - 1}"
    return f"{int(ms) - 1}-{_MAX_PART}" if int(ms) else "0-0"


def split_stream_ids(path_sid: str) -> list[str]:
    """The streams of a path's `a+b+c`; each id checked, duplicates refused."""
    sids = [check_stream_id(s) for s in path_sid.split("+")]
    if len(set(sids)) != len(sids):
        raise kernel.BadRequest(f"stream {path_sid!r} names a stream twice")
    return sids


def add_id(value: Any) -> str:
    """The XADD id of a header item: `*` when none is given."""
    if value is None or value == "":
        return "*"
    if not isinstance(value, str) or not _ADD_ID.match(value) or not _fits(value):
        raise BadFrame(f"invalid entry id {str(value)[:40]!r}: expected <ms>-<seq> or *")
    return value


_HEADER = msgspec.json.Decoder(list[Any])


def parse_header(text: str | bytes) -> list[Any]:
    try:
        items = _HEADER.decode(text)
    except msgspec.DecodeError as exc:
        raise BadFrame(f"batch header is not a JSON list: {exc}") from None
    if not items:
        raise BadFrame("batch header lists no entries")
    return items


def split_batch(
    items: Sequence[Any], blob: bytes, path_sids: list[str] | None
) -> list[tuple[str, str, memoryview]]:
    """(stream, XADD id, data) for each entry of a batch.

    `path_sids` are the streams of the socket's path (None for `*`): one stream means
    every entry goes there whatever the header says (PTG's README); several mean each
    header stream must be one of them.
    """
    sids: list[str | None] = []
    ids: list[str] = []
    offsets: list[int] = []
    for item in items:
        if isinstance(item, list) and len(item) in (2, 3):
            sid, off = item[0], item[-1]
            if not isinstance(sid, str):
                raise BadFrame(f"batch header item {item!r}: the stream id must be a string")
            sids.append(sid)
            ids.append(add_id(item[1]) if len(item) == 3 else "*")
        elif isinstance(item, int) and not isinstance(item, bool):
            sids.append(None)
            ids.append("*")
            off = item
        else:
            raise BadFrame(f"batch header item {str(item)[:60]}: expected an offset, [stream, offset] "
                           "or [stream, entry_id, offset]")
        if not isinstance(off, int) or isinstance(off, bool):
            raise BadFrame(f"batch header item {str(item)[:60]}: the offset must be an integer")
        offsets.append(off)
    bounds = _bounds(offsets, len(blob))
    view = memoryview(blob)
    out = []
    for sid, entry_id, (start, end) in zip(sids, ids, bounds):
        out.append((_target(sid, path_sids), entry_id, view[start:end]))
    return out


def _bounds(offsets: list[int], size: int) -> list[tuple[int, int]]:
    if offsets[0] == 0:  # start offsets, as PTG's README shows
        ends = [*offsets[1:], size]
        starts = offsets
    else:  # cumulative end offsets, as ptgctl sends them
        starts = [0, *offsets[:-1]]
        ends = offsets
        if ends[-1] != size:
            raise BadFrame(f"the last end offset is {ends[-1]} but the blob holds {size} bytes")
    for start, end in zip(starts, ends):
        if not 0 <= start <= end <= size:
            raise BadFrame(f"offsets {offsets[:20]} do not fit a blob of {size} bytes in order")
    return list(zip(starts, ends))


def _target(sid: str | None, path_sids: list[str] | None) -> str:
    if path_sids is not None and len(path_sids) == 1:
        return path_sids[0]
    if sid is None:
        raise BadFrame("a batch for several streams must name each entry's stream: [[stream, offset], ...]")
    try:
        check_stream_id(sid)
    except kernel.BadRequest as exc:
        raise BadFrame(exc.detail) from None
    if path_sids is not None and sid not in path_sids:
        raise BadFrame(f"stream {sid!r} is not one of this socket's streams {'+'.join(path_sids)}")
    return sid


_ENCODE = msgspec.json.Encoder()


def pack(entries: Sequence[tuple[str, str, bytes]]) -> tuple[bytes, bytes]:
    """PTG's pull framing: (JSON header of [stream, id, start offset], concatenated blob)."""
    header = []
    start = 0
    for sid, entry_id, data in entries:
        header.append((sid, entry_id, start))
        start += len(data)
    return _ENCODE.encode(header), b"".join(data for _, _, data in entries)
