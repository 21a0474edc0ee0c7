"""Just enough of the TFLite flatbuffer to see which custom ops a model needs.

An Edge TPU compiled model replaces its graph with the custom op `edgetpu-custom-op`.
Finding it before the interpreter is built lets a load without an Edge TPU fail with a
message that says so, instead of the runtime's "unresolved custom op".

Layout (TFLite `schema.fbs`): the root table is `Model`, whose field 1 is the vector of
`OperatorCode` tables; field 1 of an `OperatorCode` is its `custom_code` string.
"""

from __future__ import annotations

import struct

IDENTIFIER = b"TFL3"
EDGETPU_OP = "edgetpu-custom-op"

_MODEL_OPERATOR_CODES = 1
_OPERATOR_CODE_CUSTOM_CODE = 1


class NotTFLite(ValueError):
    """The bytes are not a TFLite flatbuffer."""


def custom_ops(data: bytes) -> set[str]:
    """The names of the custom ops a TFLite model uses; `NotTFLite` for other bytes."""
    if len(data) < 8 or data[4:8] != IDENTIFIER:
        raise NotTFLite(f"no {IDENTIFIER.decode()} file identifier")
    try:
        model = _u32(data, 0)
        codes = _field(data, model, _MODEL_OPERATOR_CODES)
        if codes is None:
            return set()
        names = set()
        for code in _tables(data, codes):
            name = _field(data, code, _OPERATOR_CODE_CUSTOM_CODE)
            if name is not None:
                names.add(_string(data, name))
        return names
    except (struct.error, UnicodeDecodeError, IndexError) as exc:
        raise NotTFLite(f"damaged flatbuffer ({exc})") from None


def _u32(data: bytes, pos: int) -> int:
    return struct.unpack_from("<I", data, pos)[0]


def _field(data: bytes, table: int, index: int) -> int | None:
    """Where the offset field `index` of the table at `table` points, or None if absent."""
    vtable = table - struct.unpack_from("<i", data, table)[0]
    vtable_size = struct.unpack_from("<H", data, vtable)[0]
    slot = 4 + 2 * index
    if slot >= vtable_size:
        return None
    offset = struct.unpack_from("<H", data, vtable + slot)[0]
    if not offset:
        return None
    pos = table + offset
    return pos + _u32(data, pos)


def _tables(data: bytes, vector: int) -> list[int]:
    count = _u32(data, vector)
    if count > len(data) // 4:
        raise IndexError("vector longer than the file")
    items = [vector + 4 + 4 * i for i in range(count)]
    return [item + _u32(data, item) for item in items]


def _string(data: bytes, pos: int) -> str:
    length = _u32(data, pos)
    if pos + 4 + length > len(data):
        raise IndexError("string runs past the end of the file")
    return data[pos + 4 : pos + 4 + length].decode("utf-8")
