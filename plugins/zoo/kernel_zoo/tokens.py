"""`tokens.json`: the zoo's access tokens, kept in a file people may also edit by hand.

The file maps each token to `{"is_admin": bool, "zoos": ["org/zoo", ...]}`. It is read
again whenever its identity (inode, size, mtime) changes, so a hand edit is picked up on
the next request. Changes go through one lock and an atomic write (temporary file, fsync,
rename: `kernel.FileStorage`), so concurrent changes never lose an update or leave a torn
file. A corrupt or empty file stops the server at startup; one corrupted while the server
runs is reported and never overwritten: reads keep the last good tokens, writes are refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from pathlib import Path

import msgspec

import kernel

log = logging.getLogger("kernel.zoo")

FILE = "tokens.json"
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


class TokenValue(msgspec.Struct, forbid_unknown_fields=False):
    is_admin: bool = False
    zoos: list[str] = []


class TokenEntry(msgspec.Struct):
    """A token and its rights, as the token routes answer."""

    token: str
    value: TokenValue


_decoder = msgspec.json.Decoder(dict[str, TokenValue])
_encoder = msgspec.json.Encoder()


def new_token() -> str:
    """A fresh token in the original server's shape: `dg_` and 27 random bytes in base58,
    left-padded with `_` to a fixed length."""
    number = int.from_bytes(secrets.token_bytes(27), "big")
    digits = ""
    while number:
        number, rest = divmod(number, 58)
        digits = _B58[rest] + digits
    return "dg_" + digits.rjust(37, "_")


class CorruptTokens(kernel.StartupError):
    pass


class TokenStore:
    """The tokens of `<zoo>/tokens.json`, reloaded when the file changes."""

    def __init__(self, root: Path) -> None:
        self.path = root / FILE
        self._tokens: dict[str, TokenValue] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._broken: str | None = None
        self._lock = asyncio.Lock()

    def load(self) -> None:
        """Read the file now; a corrupt or empty one is a `CorruptTokens` startup error."""
        self._refresh(startup=True)
        if self._broken:
            raise CorruptTokens(
                f"{self.path} is not a valid tokens file: {self._broken}; fix it, or delete it to start with no tokens"
            )

    def _refresh(self, startup: bool = False) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._stamp is not None or self._broken:
                log.info("%s was removed; no tokens are defined", FILE)
            self._tokens, self._stamp, self._broken = {}, None, None
            return
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return
        try:
            data = self.path.read_bytes()
            if not data.strip() and (self._tokens or startup):
                # Taken as no tokens, an empty file would open the first-admin bootstrap to
                # anyone: at startup, or while an editor truncates the file before writing it.
                raise ValueError("the file is empty")
            tokens = _decoder.decode(data) if data.strip() else {}
        except (OSError, ValueError) as exc:  # msgspec.DecodeError is a ValueError
            if self._broken is None and not startup:  # at startup `load` stops the server instead
                log.error("%s is not valid (%s); keeping the last good tokens until it is fixed", FILE, exc)
            self._broken, self._stamp = str(exc), stamp
            return
        if self._stamp is not None:
            log.info("%s changed on disk; %d token(s) loaded", FILE, len(tokens))
        self._tokens, self._stamp, self._broken = tokens, stamp, None

    def _write(self, data: bytes) -> None:
        """Atomically, in the file's own folder: the zoo's, or that of the file a symlinked
        tokens.json points to (a mounted secret), which is written and stays linked."""
        target = self.path.resolve()
        kernel.FileStorage(target.parent).write(target.name, data)

    def get(self, token: str) -> TokenValue | None:
        self._refresh()
        value = self._tokens.get(token)
        return None if value is None else TokenValue(value.is_admin, list(value.zoos))

    def empty(self) -> bool:
        self._refresh()
        return not self._tokens

    async def change(self, edit) -> TokenEntry:
        """Apply `edit(tokens) -> TokenEntry` to a fresh copy of the tokens and save it;
        one change at a time, each on top of the last."""
        async with self._lock:
            self._refresh()
            if self._broken:
                raise kernel.Unavailable(f"{FILE} is not valid ({self._broken}); fix it by hand before changing tokens")
            tokens = {k: TokenValue(v.is_admin, list(v.zoos)) for k, v in self._tokens.items()}
            entry = edit(tokens)
            data = msgspec.json.format(_encoder.encode(tokens), indent=2) + b"\n"
            await asyncio.to_thread(self._write, data)
            st = os.stat(self.path)
            self._tokens, self._stamp = tokens, (st.st_ino, st.st_size, st.st_mtime_ns)
            return entry
