"""Query parameters as PTG's clients send them (ptgctl writes booleans as `True`/`False`)."""

from __future__ import annotations

from collections.abc import Mapping

import kernel

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def flag(query: Mapping[str, str], name: str, default: bool | None = False) -> bool | None:
    value = query.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise kernel.BadRequest(f"query parameter {name}: expected true or false, got {value[:40]!r}")


def integer(query: Mapping[str, str], name: str, default: int | None, *, low: int = 1, high: int | None = None) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise kernel.BadRequest(f"query parameter {name}: expected an integer, got {value[:40]!r}") from None
    if number < low or (high is not None and number > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise kernel.BadRequest(f"query parameter {name}: must be {bound}, got {number}")
    return number
