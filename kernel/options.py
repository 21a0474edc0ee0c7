"""Command-line options that plugins add, grouped by the plugin that owns them.

Each plugin's `kernel_add_options(group)` gets an `OptionGroup` of its own, like pytest's
`parser.getgroup()`. An option's first flag is `--<plugin>-<key>`; its value lands in the
plugin's config section under `<key>` (dashes become underscores), the same key as in
the TOML section `[<plugin>]` and the variable `KERNEL_<PLUGIN>_<KEY>`. Further flags are
aliases (the original servers' flag names). A flag claimed twice is a `StartupError`
naming both owners.
"""

from __future__ import annotations

import argparse
from typing import Any

from kernel.errors import StartupError

#: The config section of the kernel's own options.
KERNEL = "kernel"


class OptionGroup:
    """The options of one plugin (or of the kernel), shown under its name in `--help`."""

    def __init__(self, parser: Parser, section: str, group: argparse._ArgumentGroup) -> None:
        self._parser = parser
        self.section = section
        self._group = group

    def add_option(self, *flags: str, **kwargs: Any) -> None:
        """Add an option; takes argparse's `add_argument` keywords except `dest`.

        The first flag must be `--<plugin>-<key>` (for the kernel, `--<key>`); values not
        given on the command line stay unset, so config files and the environment apply.
        """
        if "dest" in kwargs:
            raise StartupError(f"plugin {self.section!r}: options may not set dest; the key comes from the flag")
        if "default" in kwargs:
            raise StartupError(f"plugin {self.section!r}: options may not set default; it belongs in the "
                               "config section's Struct, which every layer shares")
        prefix = "--" if self.section == KERNEL else f"--{self.section}-"
        if not flags or not flags[0].startswith(prefix) or len(flags[0]) <= len(prefix):
            raise StartupError(
                f"plugin {self.section!r}: option {flags[0] if flags else '?'} must start with {prefix}<key>"
            )
        key = flags[0][len(prefix):].replace("-", "_")
        claimed = list(flags)
        if kwargs.get("action") is argparse.BooleanOptionalAction:
            claimed += ["--no-" + f[2:] for f in flags if f.startswith("--")]
        for flag in claimed:
            owner = self._parser.owners.get(flag)
            if owner is not None:
                raise StartupError(
                    f"option {flag} is claimed by both {_who(owner)} and {_who(self.section)}"
                )
        for flag in claimed:
            self._parser.owners[flag] = self.section
        self._parser.keys.setdefault(self.section, set()).add(key)
        if kwargs.get("action") not in ("store_true", "store_false", "count", argparse.BooleanOptionalAction):
            kwargs.setdefault("metavar", key.upper())
        self._group.add_argument(
            *flags, dest=f"{self.section}.{key}", default=argparse.SUPPRESS, **kwargs
        )


def flag_of(section: str, key: str) -> str:
    """The main flag that sets `key` of `section`, for error messages."""
    prefix = "--" if section == KERNEL else f"--{section}-"
    return prefix + key.replace("_", "-")


def _who(section: str) -> str:
    return "the kernel" if section == KERNEL else f"plugin {section!r}"


class Parser:
    """An argparse parser whose options are grouped by owner."""

    def __init__(self, prog: str, description: str | None = None) -> None:
        self.argparser = argparse.ArgumentParser(
            prog=prog,
            description=description,
            allow_abbrev=False,
        )
        #: flag -> owning section
        self.owners: dict[str, str] = {}
        #: section -> config keys its options set
        self.keys: dict[str, set[str]] = {}

    def group(self, section: str, title: str, description: str | None = None) -> OptionGroup:
        return OptionGroup(self, section, self.argparser.add_argument_group(title, description))

    def parse(self, argv: list[str]) -> dict[str, dict[str, Any]]:
        """Parse `argv` into {section: {key: value}} holding only the options given."""
        namespace = self.argparser.parse_args(argv)
        values: dict[str, dict[str, Any]] = {}
        for dest, value in vars(namespace).items():
            section, _, key = dest.partition(".")
            values.setdefault(section, {})[key] = value
        return values

