"""What pyzm's client does after inference, done on the server for /detect and /detect_urls:
the global pattern, zones, and choosing the best frame.

A box is in a zone when the box (as a polygon) intersects the zone's polygon, touching
included (Shapely's `intersects`, which pyzm uses). A box that intersects no zone whose
`ignore_pattern` spares it and whose `pattern` matches it is rejected into `error_boxes`
(pyzm's `any_matching` zone strategy). Labels match patterns with `re.match`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NamedTuple

from kernel import BadRequest

Point = tuple[float, float]


class Zone(NamedTuple):
    name: str
    points: list[Point]
    pattern: re.Pattern[str]
    ignore: re.Pattern[str] | None


class Found(NamedTuple):
    """One detection of one model on one frame."""

    label: str
    confidence: float
    box: tuple[int, int, int, int]
    model_name: str
    type: str = "object"


class FrameResult(NamedTuple):
    frame_id: str
    detections: list[Found]
    error_boxes: list[tuple[int, int, int, int]]
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


def compile_pattern(pattern: str | None, what: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern or ".*")
    except re.error as exc:
        raise BadRequest(f"{what} is not a valid regular expression: {exc}") from None


def parse_zones(raw: Any) -> list[Zone]:
    """Zones from JSON text or decoded JSON: a list of `{name, value|points, pattern,
    ignore_pattern}`; points as [[x, y], ...] or ZoneMinder's "x,y x,y ..." text."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise BadRequest("zones is not valid JSON") from None
    if not isinstance(raw, list):
        raise BadRequest("zones must be a JSON list of zones")
    zones = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise BadRequest(f"zone {i}: must be an object with name and points")
        name = str(item.get("name") or f"zone{i}")
        points = _points(item.get("points") or item.get("value"), name)
        zones.append(Zone(
            name, points, _zone_pattern(item, "pattern", name) or re.compile(".*"),
            _zone_pattern(item, "ignore_pattern", name),
        ))
    return zones


def _zone_pattern(item: dict, key: str, name: str) -> re.Pattern[str] | None:
    """A zone's `pattern` or `ignore_pattern`, None when absent or empty."""
    value = item.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"zone {name!r}: {key} must be a regular expression (text)")
    return compile_pattern(value, f"zone {name!r} {key}")


def _points(raw: Any, name: str) -> list[Point]:
    if isinstance(raw, str):
        raw = [pair.split(",") for pair in raw.split()]
    problem = f"zone {name!r}: points must be a polygon of at least 3 [x, y] points"
    if not isinstance(raw, list) or len(raw) < 3:
        raise BadRequest(problem)
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
    return points


def apply_filters(found: list[Found], pattern: re.Pattern[str], zones: list[Zone]
                  ) -> tuple[list[Found], list[tuple[int, int, int, int]]]:
    """Kept detections and the boxes rejected by zones (pattern rejects are just dropped,
    as pyzm drops them)."""
    found = [d for d in found if pattern.match(d.label)]
    if not zones:
        return found, []
    kept, rejected = [], []
    for d in found:
        (kept if _in_zones(d, zones) else rejected).append(d)
    return kept, [d.box for d in rejected]


def _in_zones(d: Found, zones: list[Zone]) -> bool:
    for zone in zones:
        if not box_intersects(d.box, zone.points):
            continue
        if zone.ignore is not None and zone.ignore.match(d.label):
            continue
        if zone.pattern.match(d.label):
            return True
    return False


def box_intersects(box: tuple[int, int, int, int], polygon: list[Point]) -> bool:
    """Whether the box's polygon and `polygon` share at least one point."""
    x1, y1, x2, y2 = box
    corners = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    if any(min(x1, x2) <= px <= max(x1, x2) and min(y1, y2) <= py <= max(y1, y2) for px, py in polygon):
        return True
    if any(_inside(c, polygon) for c in corners):
        return True
    box_edges = list(zip(corners, corners[1:] + corners[:1]))
    poly_edges = list(zip(polygon, polygon[1:] + polygon[:1]))
    return any(_segments_meet(a, b, c, d) for a, b in box_edges for c, d in poly_edges)


def _inside(point: Point, polygon: list[Point]) -> bool:
    """Even-odd rule (points on an edge are caught by the edge test)."""
    x, y = point
    inside = False
    for (ax, ay), (bx, by) in zip(polygon, polygon[1:] + polygon[:1]):
        if (ay > y) != (by > y) and x < ax + (y - ay) * (bx - ax) / (by - ay):
            inside = not inside
    return inside


def _orient(a: Point, b: Point, c: Point) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def _on_segment(a: Point, b: Point, p: Point) -> bool:
    return min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])


def _segments_meet(a: Point, b: Point, c: Point, d: Point) -> bool:
    o1, o2, o3, o4 = _orient(a, b, c), _orient(a, b, d), _orient(c, d, a), _orient(c, d, b)
    if ((o1 > 0) != (o2 > 0)) and o1 != 0 and o2 != 0 and ((o3 > 0) != (o4 > 0)) and o3 != 0 and o4 != 0:
        return True
    return ((o1 == 0 and _on_segment(a, b, c)) or (o2 == 0 and _on_segment(a, b, d))
            or (o3 == 0 and _on_segment(c, d, a)) or (o4 == 0 and _on_segment(c, d, b)))


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
