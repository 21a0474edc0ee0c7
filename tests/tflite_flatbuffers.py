"""Writing tiny TFLite models in tests: the two flatbuffer shapes TFLite's schema.fbs uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flatbuffers


def vector(b: flatbuffers.Builder, values: list[Any], prepend: Callable[[Any], None], size: int = 4) -> int:
    """A vector of `values`, each written with `prepend` (a `b.Prepend...` method)."""
    b.StartVector(size, len(values), size)
    for value in reversed(values):
        prepend(value)
    return b.EndVector()


def table(b: flatbuffers.Builder, fields: list[tuple[str, int, Any]]) -> int:
    """A table from (kind, slot, value) fields: kind names a `Prepend<kind>Slot` method."""
    b.StartObject(max(slot for _, slot, _ in fields) + 1)
    for kind, slot, value in fields:
        getattr(b, f"Prepend{kind}Slot")(slot, value, 0)
    return b.EndObject()
