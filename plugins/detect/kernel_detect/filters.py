"""What pyzm's client does after inference, done on the server for /detect and /detect_urls:
the global pattern, zones, and choosing the best frame.

A box is in a zone when the box (as a polygon) intersects the zone's polygon, touching
included (Shapely's `intersects`, which pyzm uses). A box that intersects no zone whose
`ignore_pattern` spares it and whose `pattern` matches it is rejected into `error_boxes`
(pyzm's `any_matching` zone strategy). Labels match patterns as pyzm's `re.match` does.

Patterns come from clients, and a regular expression can backtrack for hours on a short
label. So a pattern is read by `re`'s own parser (pyzm's syntax and error messages),
refused when long or when `regex` would unroll too many repeats compiling it, and matched
by `regex`, which stops at a deadline (`Budget`) and lets other threads run meanwhile.
Zones are parsed and detections filtered on the kernel's helper threads, within the caps
of `parse_zones`.
"""

from __future__ import annotations

import json
import math
import re
import time
from re import _parser as sre  # the stdlib's parser: a pattern's tree, to weigh before `regex` compiles it
from typing import Any, NamedTuple

import numpy as np
import regex

from kernel import BadRequest

Box = tuple[int, int, int, int]

#: Characters of one pattern (every COCO label joined by `|` takes about 600).
MAX_PATTERN = 1000
#: Nodes `regex` may build for one pattern (some 300 bytes each).
MAX_PATTERN_WEIGHT = 10_000
#: Characters of zones text allowed for each point and each zone (name, patterns): longer
#: text is refused before JSON parsing, which holds the interpreter while it runs.
POINT_BYTES = 48
ZONE_BYTES = 8192
_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT)


class PatternError(ValueError):
    """Why a pattern is refused, worded to follow the pattern's name."""


class Zone(NamedTuple):
    name: str
    #: The polygon's points, an (n, 2) float array.
    points: np.ndarray
    pattern: regex.Pattern[str]
    ignore: regex.Pattern[str] | None


class Found(NamedTuple):
    """One detection of one model on one frame."""

    label: str
    confidence: float
    box: Box
    model_name: str
    type: str = "object"


class FrameResult(NamedTuple):
    frame_id: str
    detections: list[Found]
    error_boxes: list[Box]
    #: (height, width) of the frame.
    shape: tuple[int, int]

    def as_dict(self) -> dict[str, Any]:
        """pyzm's `DetectionResult.to_dict()` without the image."""
        return {
            "boxes": [list(d.box) for d in self.detections],
            "labels": [d.label for d in self.detections],
            "confidences": [d.confidence for d in self.detections],
            "frame_id": self.frame_id,
            "image_dimensions": {"original": list(self.shape), "resized": None},
            "error_boxes": [list(b) for b in self.error_boxes],
            "model_names": [d.model_name for d in self.detections],
            "detection_types": [d.type for d in self.detections],
            "polygons": [],
        }


def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """`pattern` compiled for `Budget.match`; `PatternError` when refused."""
    if len(pattern) > MAX_PATTERN:
        raise PatternError(f"is longer than {MAX_PATTERN} characters")
    try:
        weight = _weight(sre.parse(pattern))
    except re.error as exc:
        raise PatternError(f"is not a valid regular expression: {exc}") from None
    except RecursionError:
        raise PatternError("nests groups too deeply") from None
    if weight > MAX_PATTERN_WEIGHT:
        raise PatternError("repeats too much: counted repeats such as {100} multiply when nested")
    try:
        # Not kept in `regex`'s own cache of 500 patterns, which clients would fill.
        return regex.compile(pattern, cache_pattern=False)
    except regex.error as exc:
        raise PatternError(f"is not a valid regular expression: {exc}") from None
    except RecursionError:  # `regex` recurses deeper than `re` on nested groups
        raise PatternError("nests groups too deeply") from None


def request_pattern(pattern: str | None, what: str) -> regex.Pattern[str]:
    """A client's pattern (empty: any label); a 400 naming it (`what`) when refused."""
    try:
        return compile_pattern(pattern or ".*")
    except PatternError as exc:
        raise BadRequest(f"{what} {exc}") from None


def _weight(nodes: Any) -> int:
    """How many nodes `regex` may build for a parsed pattern, counted high: it unrolls
    counted repeats, so the 31 characters `(?:(?:(?:a{1000}){1000}){1000})` would take
    hundreds of gigabytes."""
    total = 0
    for op, av in nodes:
        inner = sum(_weight(p) for p in _subpatterns(av))
        total += (av[0] + 1) * inner if op in _REPEATS else 1 + inner
    return total


def _subpatterns(av: Any) -> list[sre.SubPattern]:
    """The nested patterns of a node's argument (a repeat's body, a branch's choices...)."""
    items = av if isinstance(av, (tuple, list)) else [av]
    flat = [y for x in items for y in (x if isinstance(x, list) else [x])]
    return [x for x in flat if isinstance(x, sre.SubPattern)]


_ANY = compile_pattern(".*")


class Budget:
    """The seconds of pattern matching one request has left; beyond them it is a 400."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.left = seconds

    def match(self, pattern: regex.Pattern[str], label: str, what: str) -> bool:
        if pattern.pattern in ("", ".*"):  # any label, as pyzm skips them
            return True
        # This thread's CPU time: a wait for the interpreter lock, which `regex` lets go
        # while it matches, is not the pattern's doing (a busy server would refuse `a|b`).
        started = time.thread_time()
        try:
            return pattern.match(label, timeout=max(self.left, 0)) is not None
        except TimeoutError:
            raise BadRequest(f"{what} took more than {self.seconds:g}s to match the labels "
                             "(--detect-pattern-timeout); simplify it") from None
        finally:
            self.left -= time.thread_time() - started


def parse_zones(text: str | bytes, max_zones: int, max_points: int) -> list[Zone]:
    """Zones from JSON text: a list of `{name, value|points, pattern, ignore_pattern}`;
    points as [[x, y], ...] or ZoneMinder's "x,y x,y ..." text. At most `max_zones` zones
    of `max_points` points (blocking: run on a helper thread)."""
    if not text:
        return []
    limit = max_zones * (max_points * POINT_BYTES + ZONE_BYTES)
    if len(text) > limit:
        raise BadRequest(f"zones: longer than {limit} characters (at most {max_zones} zones of "
                         f"{max_points} points: --detect-max-zones, --detect-max-zone-points)")
    try:
        raw = json.loads(text)
    except ValueError:
        raise BadRequest("zones is not valid JSON") from None
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest("zones must be a JSON list of zones")
    if len(raw) > max_zones:
        raise BadRequest(f"zones: at most {max_zones} zones per request (--detect-max-zones)")
    zones = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise BadRequest(f"zone {i}: must be an object with name and points")
        name = str(item.get("name") or f"zone{i}")
        points = _points(item.get("points") or item.get("value"), name, max_points)
        zones.append(Zone(
            name, points, _zone_pattern(item, "pattern", name) or _ANY,
            _zone_pattern(item, "ignore_pattern", name),
        ))
    return zones


def _zone_pattern(item: dict, key: str, name: str) -> regex.Pattern[str] | None:
    """A zone's `pattern` or `ignore_pattern`, None when absent or empty."""
    value = item.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"zone {name!r}: {key} must be a regular expression (text)")
    return request_pattern(value, f"zone {name!r} {key}")


def _points(raw: Any, name: str, max_points: int) -> np.ndarray:
    if isinstance(raw, str):
        raw = [pair.split(",") for pair in raw.split()]
    problem = f"zone {name!r}: points must be a polygon of at least 3 [x, y] points"
    if not isinstance(raw, list) or len(raw) < 3:
        raise BadRequest(problem)
    if len(raw) > max_points:
        raise BadRequest(f"zone {name!r}: at most {max_points} points per zone (--detect-max-zone-points)")
    points = []
    for point in raw:
        if not isinstance(point, (list, tuple)) or len(point) != 2:
            raise BadRequest(problem)
        try:
            x, y = float(point[0]), float(point[1])
        except (TypeError, ValueError):
            raise BadRequest(problem) from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise BadRequest(problem)
        points.append((x, y))
    return np.array(points, dtype=np.float64)


def apply_filters(found: list[Found], pattern: regex.Pattern[str], what: str, zones: list[Zone], budget: Budget
                  ) -> tuple[list[Found], list[Box]]:
    """Kept detections and the boxes rejected by zones (pattern rejects are just dropped,
    as pyzm drops them); `what` names the pattern (blocking: run on a helper thread)."""
    found = [d for d in found if budget.match(pattern, d.label, what)]
    if not zones:
        return found, []
    kept, rejected = [], []
    for d in found:
        (kept if _in_zones(d, zones, budget) else rejected).append(d)
    return kept, [d.box for d in rejected]


def _in_zones(d: Found, zones: list[Zone], budget: Budget) -> bool:
    for zone in zones:
        if not box_intersects(d.box, zone.points):
            continue
        if zone.ignore is not None and budget.match(zone.ignore, d.label, f"zone {zone.name!r} ignore_pattern"):
            continue
        if budget.match(zone.pattern, d.label, f"zone {zone.name!r} pattern"):
            return True
    return False


def box_intersects(box: Box, polygon: np.ndarray) -> bool:
    """Whether the box's polygon and `polygon` ((n, 2) points) share at least one point;
    over every edge at once, so a zone of many points stays quick."""
    x1, y1, x2, y2 = box
    lo_x, hi_x, lo_y, hi_y = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
    px, py = polygon[:, 0], polygon[:, 1]
    if np.any((lo_x <= px) & (px <= hi_x) & (lo_y <= py) & (py <= hi_y)):
        return True
    corners = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    if any(_inside(c, polygon) for c in corners):
        return True
    qx, qy = np.roll(px, -1), np.roll(py, -1)
    return any(_meets(a, b, px, py, qx, qy) for a, b in zip(corners, corners[1:] + corners[:1]))


def _inside(point: tuple[float, float], polygon: np.ndarray) -> bool:
    """Even-odd rule (points on an edge are caught by the edge test)."""
    x, y = point
    ax, ay = polygon[:, 0], polygon[:, 1]
    bx, by = np.roll(ax, -1), np.roll(ay, -1)
    crosses = (ay > y) != (by > y)
    with np.errstate(divide="ignore", invalid="ignore"):  # only where the edge is level, and not crossed
        at = ax + (y - ay) * (bx - ax) / (by - ay)
    return bool(np.count_nonzero(crosses & (x < at)) % 2)


def _meets(a: tuple[float, float], b: tuple[float, float],
           cx: np.ndarray, cy: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> bool:
    """Whether segment a-b meets any of the segments c-d (touching included)."""
    o1 = (b[0] - a[0]) * (cy - a[1]) - (b[1] - a[1]) * (cx - a[0])
    o2 = (b[0] - a[0]) * (dy - a[1]) - (b[1] - a[1]) * (dx - a[0])
    o3 = (dx - cx) * (a[1] - cy) - (dy - cy) * (a[0] - cx)
    o4 = (dx - cx) * (b[1] - cy) - (dy - cy) * (b[0] - cx)
    proper = ((o1 > 0) != (o2 > 0)) & (o1 != 0) & (o2 != 0) & ((o3 > 0) != (o4 > 0)) & (o3 != 0) & (o4 != 0)

    def on(sx: Any, sy: Any, tx: Any, ty: Any, px: Any, py: Any) -> np.ndarray:
        return ((np.minimum(sx, tx) <= px) & (px <= np.maximum(sx, tx))
                & (np.minimum(sy, ty) <= py) & (py <= np.maximum(sy, ty)))

    touching = (((o1 == 0) & on(a[0], a[1], b[0], b[1], cx, cy)) | ((o2 == 0) & on(a[0], a[1], b[0], b[1], dx, dy))
                | ((o3 == 0) & on(cx, cy, dx, dy, a[0], a[1])) | ((o4 == 0) & on(cx, cy, dx, dy, b[0], b[1])))
    return bool(np.any(proper | touching))


def better(candidate: FrameResult, current: FrameResult, strategy: str) -> bool:
    """pyzm's frame comparison: whether `candidate` beats `current` under `strategy`."""
    def total(r: FrameResult) -> float:
        return sum(d.confidence for d in r.detections)

    cand, cur = candidate.detections, current.detections
    if strategy in ("first", "first_new"):
        return bool(cand) and not cur
    if strategy == "most":
        return len(cand) > len(cur) if len(cand) != len(cur) else total(candidate) > total(current)
    if strategy == "most_unique":
        a, b = len({d.label for d in cand}), len({d.label for d in cur})
        return a > b if a != b else total(candidate) > total(current)
    a, b = len({d.model_name for d in cand}), len({d.model_name for d in cur})
    if a != b:
        return a > b
    return len(cand) > len(cur) if len(cand) != len(cur) else total(candidate) > total(current)


def best_frame(results: list[FrameResult], strategy: str) -> FrameResult:
    best = results[0]
    for result in results[1:]:
        if better(result, best, strategy):
            best = result
    return best
