"""entrypoints.toml is the one list of in-tree entry points: it must say exactly what the
distributions' own pyproject.toml files declare."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def declared() -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    projects = [REPO / "pyproject.toml", *sorted((REPO / "plugins").glob("**/pyproject.toml"))]
    for path in projects:
        groups = tomllib.loads(path.read_text())["project"].get("entry-points", {})
        for group, points in groups.items():
            for name, target in points.items():
                assert name not in found.get(group, {}), f"{group}:{name} is declared twice ({path})"
                found.setdefault(group, {})[name] = target
    return found


def test_entrypoints_toml_matches_the_pyproject_files():
    listed = tomllib.loads((REPO / "entrypoints.toml").read_text())
    assert listed == declared()


def test_every_listed_entry_point_is_installed():
    import importlib.metadata

    for group, points in declared().items():
        installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=group)}
        for name, target in points.items():
            assert installed.get(name) == target, f"{group}:{name} is not installed as {target}"
