"""Tensors between the wire and NumPy, checked against a model's metadata.

Raw bytes (the REST binary extension, gRPC `raw_input_contents`) become arrays with
`np.frombuffer`, never element by element; only JSON lists and gRPC typed contents,
which are lists by nature, go through `np.array`. JSON data is checked against the model's
datatype, strictly, before NumPy sees it. BYTES tensors use the protocol's raw layout: each
element a 4-byte little-endian length followed by its bytes.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any

import msgspec
import numpy as np

from kernel import DATATYPES, InvalidInput, TensorInfo

_LENGTH = struct.Struct("<I")
_INT64_MAX = 2**63 - 1


def check_header(info: TensorInfo, datatype: str, shape: Sequence[int]) -> int:
    """Check a request tensor's datatype and shape against the model's; its element count."""
    name = info.name
    if datatype not in DATATYPES:
        raise InvalidInput(
            f"input {name!r}: unsupported datatype {datatype!r}; expected {info.datatype}"
        )
    if datatype != info.datatype:
        raise InvalidInput(f"input {name!r}: expected datatype {info.datatype}, got {datatype}")
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"input {name!r}: shape {list(shape)} has a negative dimension")
    if not info.accepts_shape(tuple(shape)):
        raise InvalidInput(
            f"input {name!r}: expected shape {list(info.shape)} (-1 is any size), got {list(shape)}"
        )
    return math.prod(shape)


def input_infos(expected: Mapping[str, TensorInfo], names: Iterable[str]) -> Mapping[str, TensorInfo]:
    """The model's input metadata by name; unknown, repeated or missing inputs are refused."""
    seen: set[str] = set()
    for name in names:
        if name not in expected:
            raise InvalidInput(f"unknown input {name!r}; the model takes {sorted(expected)}")
        if name in seen:
            raise InvalidInput(f"input {name!r} is given twice")
        seen.add(name)
    if len(seen) != len(expected):
        missing = sorted(set(expected) - seen)
        raise InvalidInput(f"missing input {', '.join(map(repr, missing))}")
    return expected


def from_buffer(info: TensorInfo, shape: Sequence[int], buffer: bytes | memoryview) -> np.ndarray:
    """An array from raw bytes, which must hold exactly the elements `shape` asks for."""
    count = math.prod(shape)
    if info.datatype == "BYTES":
        return decode_bytes(info.name, buffer, count).reshape(shape)
    dtype = DATATYPES[info.datatype]
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise InvalidInput(
            f"input {info.name!r}: {len(buffer)} bytes of data, expected {expected} "
            f"for shape {list(shape)} of {info.datatype}"
        )
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    # A tensor behind an odd-length JSON header is unaligned; runtimes want aligned memory.
    return array if array.flags.aligned else array.copy()


def from_contents(info: TensorInfo, shape: Sequence[int], values: np.ndarray, field: str) -> np.ndarray:
    """An array from gRPC typed contents, `values` as their protobuf `field` holds them
    (int32 for `int_contents`): narrowed to the datatype only once each value fits it."""
    datatype = info.datatype
    if datatype != "BYTES":
        must = f"input {info.name!r}: {datatype} data must be {_json_element(datatype)[1]}"
        _check_range(must, datatype, values, field)
        values = values.astype(DATATYPES[datatype], copy=False)
    return _shaped(info, shape, values)


def _check_range(must: str, datatype: str, values: np.ndarray, where: str) -> None:
    """Refuse `values` (of a type at least as wide as the datatype's) that `datatype` cannot
    hold, naming the first by its index in `where`. NumPy compares the whole array, where a
    cast would turn 400 into -112 as INT8, or 70000 into an infinity as FP16."""
    dtype = DATATYPES[datatype]
    if np.can_cast(values.dtype, dtype):
        return
    if dtype.kind == "f":
        with np.errstate(over="ignore"):
            bad = np.isfinite(values) & ~np.isfinite(values.astype(dtype))
    else:
        bounds = np.iinfo(dtype)
        bad = (values < int(bounds.min)) | (values > int(bounds.max))
    if bad.any():
        index = np.unravel_index(np.argmax(bad), bad.shape)
        at = "".join(f"[{i}]" for i in index)
        raise InvalidInput(f"{must}; {values[index]} is out of range - at `{where}{at}`")


def json_must(name: str, datatype: Any) -> str:
    """The start of an error in an input's JSON `data`: the JSON its datatype takes."""
    if not isinstance(datatype, str) or datatype not in DATATYPES:  # the datatype check names it later
        return f"input {name!r}: data must be JSON numbers, booleans or strings"
    return f"input {name!r}: {datatype} data must be JSON {_json_element(datatype)[1]}"


def from_json(info: TensorInfo, shape: Sequence[int], data: Any) -> np.ndarray:
    """An array from JSON `data` (as decoded, flat or nested, or still undecoded as
    `msgspec.Raw`), checked strictly for the datatype: msgspec checks every element's type
    (and an integer's range) in C, so that `"7"`, `1.9`, `null` or `true` are refused rather
    than coerced by NumPy."""
    name, datatype = info.name, info.datatype
    must = json_must(name, datatype)
    if isinstance(data, msgspec.Raw):
        data = _decode_sized(info, shape, must, data)
    depth = _depth(data)
    if depth > max(len(shape), 1):
        raise InvalidInput(f"input {name!r}: data is nested deeper than its shape {list(shape)}")
    try:
        array = _json_array(must, datatype, msgspec.convert(data, _json_type(datatype, depth)), depth)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"{must}; {str(exc).replace('`$', '`data', 1)}") from None
    except InvalidInput:  # a value out of range, named already (InvalidInput is a ValueError)
        raise
    except ValueError:
        raise InvalidInput(f"input {name!r}: data is not a regular array of {datatype} values") from None
    return _shaped(info, shape, array)


def _decode_sized(info: TensorInfo, shape: Sequence[int], must: str, raw: msgspec.Raw) -> Any:
    """JSON `data` that a request far longer than its model's inputs need left undecoded
    (they are of fixed size, and not BYTES: see `Plan.elements`), decoded only once its text
    shows no more elements or lists than `shape` has room for: decoding makes an object of
    each, many times the size of its text. Numbers and booleans hold no strings, so commas
    and brackets are all structure: n elements take n - 1 commas, and one more for each empty
    list, which any list but the outer one may be; c commas in l lists are c + 2 - l elements
    at least (at most one where there are none, which `_shaped` counts after decoding)."""
    text = np.frombuffer(raw, np.uint8)
    if np.count_nonzero(text == ord('"')) or np.count_nonzero(text == ord("{")):
        raise InvalidInput(f"{must}; it holds strings or objects")
    commas, lists = np.count_nonzero(text == ord(",")), np.count_nonzero(text == ord("["))
    count = math.prod(shape)
    if commas and commas + 2 - lists > count:
        raise InvalidInput(
            f"input {info.name!r}: at least {commas + 2 - lists} elements of data, expected {count} "
            f"for shape {list(shape)}"
        )
    # A regular array of `count` elements (of the non-zero sizes, where one is zero) nested no
    # deeper than the shape has no more lists than this.
    if lists > 1 + len(shape) * math.prod(max(dim, 1) for dim in shape):
        raise InvalidInput(f"input {info.name!r}: data holds {lists} lists, more than data of shape {list(shape)} can")
    try:
        return msgspec.json.decode(raw)
    except msgspec.ValidationError as exc:  # a number no float holds (1e400)
        raise InvalidInput(f"{must}; {str(exc).replace('`$', '`data', 1)}") from None


def _json_array(must: str, datatype: str, values: Any, depth: int) -> np.ndarray:
    """The array of decoded `values` (for BYTES, flat and of UTF-8 bytes); ValueError where
    they are ragged."""
    if datatype != "BYTES":
        dtype = DATATYPES[datatype]
        try:
            with np.errstate(over="ignore"):
                array = np.array(values, dtype=dtype)
        except OverflowError:  # a UINT64 value above its range: msgspec's bounds stop at int64's
            wide = np.array(values, dtype=object)
        else:
            # JSON numbers are finite: an infinity here is a value past FP16's or FP32's range.
            # Only then are the values read again, so that FP32 data needs no wider copy.
            if dtype.kind != "f" or np.isfinite(array).all():
                return array
            wide = np.array(values, dtype=np.float64)
        if wide.ndim != depth:  # ragged: NumPy keeps the uneven lists as elements
            raise ValueError("ragged")
        _check_range(must, datatype, wide, "data")
        return wide.astype(dtype)
    strings = np.array(values, dtype=object)
    if strings.ndim != depth:  # ragged: NumPy keeps the uneven lists as elements
        raise ValueError("ragged")
    array = np.empty(strings.size, dtype=object)
    array[:] = [item.encode() for item in strings.reshape(-1)]
    return array


def _shaped(info: TensorInfo, shape: Sequence[int], array: np.ndarray) -> np.ndarray:
    count = math.prod(shape)
    if array.size != count:
        raise InvalidInput(
            f"input {info.name!r}: {array.size} elements of data, expected {count} for shape {list(shape)}"
        )
    return array.reshape(shape)


def _depth(data: Any) -> int:
    """How deeply `data` nests lists, read along its first elements."""
    depth = 0
    while isinstance(data, list):
        depth += 1
        if not data:
            break
        data = data[0]
    return depth


@functools.cache
def _json_type(datatype: str, depth: int) -> Any:
    """The type of `depth` nested lists of `datatype`'s elements."""
    element = _json_element(datatype)[0]
    for _ in range(depth):
        element = list[element]
    return element


@functools.cache
def _json_element(datatype: str) -> tuple[Any, str]:
    """The type of `datatype`'s elements in JSON, and what they must be."""
    if datatype == "BOOL":
        return bool, "true or false"
    if datatype == "BYTES":
        return str, "strings"
    dtype = DATATYPES[datatype]
    if dtype.kind == "f":
        return float, "numbers"
    low, high = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
    # msgspec bounds must fit an int64; NumPy refuses a UINT64 value above its range instead.
    bounds = msgspec.Meta(ge=low, le=high if high <= _INT64_MAX else None)
    return Annotated[int, bounds], f"integers from {low} to {high}"


def decode_bytes(name: str, buffer: bytes | memoryview, count: int) -> np.ndarray:
    """A BYTES tensor from its raw layout, which must hold exactly `count` elements."""
    view = memoryview(buffer)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidInput(f"input {name!r}: BYTES data ends inside an element's length")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(f"input {name!r}: a BYTES element runs past the end of the data")
        items.append(bytes(view[offset:offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidInput(f"input {name!r}: {len(items)} BYTES elements, expected {count}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def encode_bytes(array: np.ndarray) -> bytes:
    """The raw layout of a BYTES (object or string) array."""
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def raw(array: np.ndarray) -> bytes | memoryview:
    """The raw bytes of an output tensor, row-major: a view of the array where it is
    contiguous already, so that the answer copies it once, into the response."""
    if array.dtype.kind in "OSU":
        return encode_bytes(array)
    return memoryview(np.ascontiguousarray(array)).cast("B")


def as_json_data(name: str, array: np.ndarray) -> list[Any]:
    """An output's elements, flattened row-major, as JSON values."""
    if array.dtype.kind in "OSU":
        try:
            return [item.decode() if isinstance(item, bytes) else str(item) for item in array.reshape(-1)]
        except UnicodeDecodeError:
            raise InvalidInput(
                f"output {name!r} holds bytes that are not UTF-8; ask for it with binary_data"
            ) from None
    return array.reshape(-1).tolist()


def select_outputs(outputs: Mapping[str, np.ndarray], wanted: Sequence[str] | None) -> dict[str, np.ndarray]:
    """The requested outputs (all when none are named); an unknown name is refused."""
    if not wanted:
        return dict(outputs)
    unknown = [name for name in wanted if name not in outputs]
    if unknown:
        raise InvalidInput(
            f"unknown output {', '.join(map(repr, unknown))}; the model gives {sorted(outputs)}"
        )
    return {name: outputs[name] for name in wanted}
