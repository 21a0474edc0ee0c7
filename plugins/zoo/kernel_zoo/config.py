"""The `[zoo]` config section and the command-line options that set it."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

import kernel

GiB = 1024**3
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class ZooConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where the zoo lives and how much an upload may weigh."""

    #: The zoo root: `tokens.json` and `<org>/<zoo>/<model>.zip` (created if missing).
    dir: str = "./zoo"
    #: Largest upload request body, counted while it arrives.
    max_upload: Annotated[int, msgspec.Meta(ge=1)] = 4 * GiB
    #: Largest total uncompressed size of an archive's members.
    max_unpacked: Annotated[int, msgspec.Meta(ge=1)] = 16 * GiB
    #: Largest ratio of uncompressed to compressed size (a zip bomb compresses far better).
    max_ratio: Annotated[float, msgspec.Meta(gt=1)] = 200.0
    #: Most members an archive may hold.
    max_members: Annotated[int, msgspec.Meta(ge=2)] = 10_000


def size(value: str) -> int:
    """Bytes from `1048576`, `512M`, `4G`, `4GiB`."""
    match = _SIZE_RE.match(value)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"invalid size {value!r}: use bytes or a K, M, G, T suffix")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


size.__name__ = "size"  # argparse names the type in its error message


def add_options(group: kernel.OptionGroup) -> None:
    group.add_option("--zoo-dir", "--zoo", metavar="DIR",
                     help="zoo root holding tokens.json and <org>/<zoo>/<model>.zip (default: ./zoo, created if missing)")
    group.add_option("--zoo-max-upload", type=size, metavar="SIZE",
                     help="largest model upload, e.g. 512M (default: 4G)")
    group.add_option("--zoo-max-unpacked", type=size, metavar="SIZE",
                     help="largest total uncompressed size of an uploaded archive (default: 16G)")
    group.add_option("--zoo-max-ratio", type=float, metavar="RATIO",
                     help="largest uncompressed/compressed size ratio of an uploaded archive (default: 200)")
    group.add_option("--zoo-max-members", type=int, metavar="N",
                     help="most members an uploaded archive may hold (default: 10000)")
