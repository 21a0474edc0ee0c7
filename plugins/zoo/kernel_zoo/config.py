"""The `[zoo]` config section and the command-line options that set it."""

from __future__ import annotations

from typing import Annotated

import msgspec

import kernel

GiB = 1024**3


class ZooConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where the zoo lives and how much an upload may weigh."""

    #: The zoo root: `tokens.json` and `<org>/<zoo>/<model>.zip` (created if missing).
    dir: str = "./zoo"
    #: Largest upload request body, counted while it arrives.
    max_upload: kernel.ByteSize = 4 * GiB
    #: Largest total uncompressed size of an archive's members.
    max_unpacked: kernel.ByteSize = 16 * GiB
    #: Largest ratio of uncompressed to compressed size (a zip bomb compresses far better).
    max_ratio: Annotated[float, msgspec.Meta(gt=1)] = 200.0
    #: Most members an archive may hold.
    max_members: Annotated[int, msgspec.Meta(ge=2)] = 10_000


def add_options(group: kernel.OptionGroup) -> None:
    group.add_option("--zoo-dir", "--zoo", metavar="DIR",
                     help="zoo root holding tokens.json and <org>/<zoo>/<model>.zip (default: ./zoo, created if missing)")
    group.add_option("--zoo-max-upload", type=kernel.byte_size, metavar="SIZE",
                     help="largest model upload, e.g. 512M (default: 4G)")
    group.add_option("--zoo-max-unpacked", type=kernel.byte_size, metavar="SIZE",
                     help="largest total uncompressed size of an uploaded archive (default: 16G)")
    group.add_option("--zoo-max-ratio", type=float, metavar="RATIO",
                     help="largest uncompressed/compressed size ratio of an uploaded archive (default: 200)")
    group.add_option("--zoo-max-members", type=int, metavar="N",
                     help="most members an uploaded archive may hold (default: 10000)")
