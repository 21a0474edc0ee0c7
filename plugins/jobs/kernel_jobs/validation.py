"""Client inputs checked and converted the way AIME's server does it.

Every problem is collected, so one 400 lists them all; unknown parameters are refused;
numbers outside minimum/maximum or off `align` are refused unless the input sets
`auto_convert`, which clamps them instead. Media inputs must be base64 data URLs.
A query string (a GET submit) carries only text, so there numbers and booleans are read
from their text; elsewhere a string for a number is refused unless `auto_convert`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

from kernel_jobs.endpoints import CONTROL_INPUTS

PYTHON_TYPES: dict[str, type] = {
    "string": str, "str": str, "integer": int, "int": int, "float": float, "bool": bool,
    "boolean": bool, "image": str, "audio": str, "video": str, "json": str,
    "chat_context": str, "text_context": str,
}
MEDIA_TYPES = ("image", "audio", "video")
DATA_URL_RE = re.compile(r"^data:(\w+)/([\w.-]+);base64$")
CHAT_ROLES = frozenset({"system", "user", "assistant"})
BOOL_TEXT = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def short(value: Any, limit: int = 50) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class Validator:
    def __init__(self, inputs: dict[str, dict[str, Any]], from_query: bool = False) -> None:
        self.inputs = inputs
        self.from_query = from_query
        self.errors: list[str] = []

    def run(self, given: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        unknown = [k for k in given if k not in self.inputs and k not in CONTROL_INPUTS]
        if unknown:
            self.errors.append(f"Invalid input parameter(s): {', '.join(unknown)}")
        job_data: dict[str, Any] = {}
        for name, spec in self.inputs.items():
            value = given.get(name)
            if value is None:
                if spec.get("required"):
                    self.errors.append(f"Missing required argument: {name}")
                    continue
                value = spec.get("default")
                if value is None:
                    continue
            converted = self.convert(name, spec, value)
            if converted is not None:
                job_data[name] = converted
        return job_data, self.errors

    def convert(self, name: str, spec: dict[str, Any], value: Any) -> Any:
        kind = spec.get("type", "string")
        if kind == "selection":
            return self.selection(name, spec, value)
        value = self.of_type(name, spec, kind, value)
        if value is None:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return self.number(name, spec, value)
        if kind in ("string", "str"):
            return self.string(name, spec, value)
        if kind == "json":
            return self.json_value(name, value)
        if kind == "chat_context":
            return self.chat_context(name, value)
        if kind in MEDIA_TYPES:
            return self.media(name, spec, kind, value)
        return value

    def of_type(self, name: str, spec: dict[str, Any], kind: str, value: Any) -> Any:
        expected = PYTHON_TYPES[kind]
        if isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool):
            return value
        if self.from_query and isinstance(value, str) and expected in (int, float, bool):
            return self.from_text(name, kind, expected, value)
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if expected in (int, float) and numeric:
            if expected is int and value != int(value) and not spec.get("auto_convert"):
                self.errors.append(f"Invalid argument type {name}={short(value)}. Expected: integer but got float!")
                return None
            try:
                return expected(value)
            except OverflowError:  # an integer past a float's range
                self.errors.append(f"Could not convert {name}={short(value)} to {kind}!")
                return None
        if spec.get("auto_convert"):
            try:
                if expected is bool and isinstance(value, str):
                    return value.strip().lower() in ("1", "true", "yes", "on")
                converted = expected(value)
                if expected is float and not math.isfinite(converted):
                    # "nan" passes every limit and reaches the worker as null; "inf" is no JSON
                    raise ValueError(value)
                return converted
            except (TypeError, ValueError, OverflowError):
                self.errors.append(f"Could not convert {name}={short(value)} to {kind}!")
                return None
        self.errors.append(
            f"Invalid argument type {name}={short(value)}. Expected: {kind} but got {type(value).__name__}!"
        )
        return None

    def from_text(self, name: str, kind: str, expected: type, value: str) -> Any:
        text = value.strip()
        try:
            if expected is bool:
                return BOOL_TEXT[text.lower()]
            number = expected(text)
            if not math.isfinite(number):
                raise ValueError(text)
            return number
        except (KeyError, ValueError):
            self.errors.append(f"Invalid argument type {name}={short(value)}. Expected: {kind}!")
            return None

    def number(self, name: str, spec: dict[str, Any], value: float) -> float | None:
        auto = spec.get("auto_convert")
        high = spec.get("maximum", spec.get("max"))
        low = spec.get("minimum", spec.get("min"))
        for limit, too, beyond in ((high, "high", value > (high or 0)), (low, "low", value < (low or 0))):
            if limit is not None and beyond:
                if not auto:
                    self.errors.append(
                        f"Parameter {name} = {value} is too {too}. "
                        f"{'Max' if too == 'high' else 'Min'} supported value for {name} on this endpoint is {limit}!"
                    )
                    return None
                value = type(value)(limit)
        align = spec.get("align")
        if align:
            base = low or 0
            off = (value - base) % align
            if off:
                if not auto:
                    self.errors.append(f"Parameter {name} = {value} is not aligned to {align}!")
                    return None
                value = type(value)(value - off)
        return value

    def string(self, name: str, spec: dict[str, Any], value: str) -> str | None:
        limit = spec.get("max_length")
        if limit is not None and len(value) > limit:
            if spec.get("auto_convert"):
                return value[: int(limit)]
            self.errors.append(f"Length of argument {name}={short(value)} exceeds the maximum length ({limit})!")
            return None
        return value

    def selection(self, name: str, spec: dict[str, Any], value: Any) -> Any:
        supported = spec["supported"]
        if value in supported:
            return value
        if spec.get("auto_convert"):
            return spec.get("default") if spec.get("default") is not None else supported[0]
        self.errors.append(f"Parameter {name} = {short(value)} not in supported values {supported}!")
        return None

    def json_value(self, name: str, value: str) -> Any:
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # RecursionError: nested too deep to decode
            self.errors.append(f"Input parameter {name}={short(value)} has invalid json format!")
            return None

    def chat_context(self, name: str, value: str) -> Any:
        context = self.json_value(name, value)
        if context is None:
            return None
        if not isinstance(context, list) or not all(isinstance(m, dict) for m in context):
            self.errors.append(f"Input parameter {name}={short(context)} has invalid chat context format!")
            return None
        for message in context:
            if "role" not in message or "content" not in message:
                self.errors.append(f"Input parameter {name} has an item without the required keys 'role' and 'content'")
                return None
            if message["role"] not in CHAT_ROLES:
                self.errors.append(f"Input parameter {name} has an item with an invalid role; allowed: {sorted(CHAT_ROLES)}")
                return None
        return context

    def media(self, name: str, spec: dict[str, Any], kind: str, value: str) -> str | None:
        header, comma, body = value.partition(",")
        match = DATA_URL_RE.match(header)
        if not comma or not match:
            self.errors.append(f"Input parameter {name} must be a data URL like data:{kind}/<format>;base64,...")
            return None
        if match.group(1).lower() != kind:
            self.errors.append(f"Input parameter {name} is {match.group(1)} data, expected {kind}")
            return None
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            self.errors.append(f"Input parameter {name} is not valid base64")
            return None
        formats = spec.get("format", {})
        supported = formats.get("supported") if isinstance(formats, dict) else None
        if supported and match.group(2).lower() not in [str(s).lower() for s in supported]:
            self.errors.append(f"Input parameter {name}: format {match.group(2)} not in supported formats {supported}")
            return None
        return value


def validate(inputs: dict[str, dict[str, Any]], given: dict[str, Any],
             from_query: bool = False) -> tuple[dict[str, Any], list[str]]:
    """The job data for `given` client inputs, and every validation error."""
    return Validator(inputs, from_query).run(given)
