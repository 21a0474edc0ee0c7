"""The users file `/token` checks passwords against, the threads that check them, and a
command to add users to the file.

One user a line, `name:scrypt$<log2 n>$<r>$<p>$<salt, base64>$<hash, base64>`; blank lines
and lines starting with `#` are ignored. Add or replace a user with
`python -m kernel_streams.users FILE NAME` (the password is read from the terminal, or
from standard input when it is not a terminal).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kernel

_SCHEME = "scrypt"
_LOG2_N, _R, _P = 14, 8, 1


def hash_password(password: str, *, salt: bytes | None = None, log2_n: int = _LOG2_N) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**log2_n, r=_R, p=_P, maxmem=2**26)
    b64 = base64.b64encode
    return f"{_SCHEME}${log2_n}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, encoded: str) -> bool:
    """Whether `password` matches `encoded` (constant time in the digest compare)."""
    try:
        scheme, log2_n, r, p, salt, digest = encoded.split("$")
        if scheme != _SCHEME:
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=2 ** int(log2_n), r=int(r), p=int(p),
            maxmem=2**26, dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


#: Checked for unknown users, so a wrong name costs as long as a wrong password.
_DUMMY = hash_password("", salt=b"\0" * 16)


def load_users(path: str) -> dict[str, str]:
    """{name: encoded hash} from a users file; a malformed line is a StartupError naming it."""
    users: dict[str, str] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise kernel.StartupError(f"--streams-users: cannot read {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, encoded = line.partition(":")
        if not sep or not name or not encoded.startswith(_SCHEME + "$") or encoded.count("$") != 5:
            raise kernel.StartupError(
                f"--streams-users: {path} line {number}: expected `name:{_SCHEME}$...` "
                "(make lines with `python -m kernel_streams.users FILE NAME`)"
            )
        users[name] = encoded
    return users


class Users:
    """Who may log in: the users file, and PTG's development rule when enabled."""

    def __init__(self, users: dict[str, str], dev_login: bool) -> None:
        self._users = users
        self._dev_login = dev_login

    def check(self, name: str, password: str) -> bool:
        """Blocking (scrypt): call it in a thread."""
        if not name or not password:
            return False
        encoded = self._users.get(name)
        if encoded is not None:
            return check_password(password, encoded)
        check_password(password, _DUMMY)  # the time a known user's check takes
        return self._dev_login and hmac.compare_digest(name.encode(), password.encode())


class Logins:
    """Password checks on threads of their own. Each is ~16 MiB and tens of ms of scrypt: a
    flood of logins on the default thread pool, which every plugin's `asyncio.to_thread`
    shares, would hold up all of them. Past `queue` checks waiting for a thread, a login is
    refused with a 503 before anything about the user is looked at."""

    def __init__(self, users: Users, *, threads: int, queue: int) -> None:
        self._users = users
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="streams-login")
        self._most = threads + queue
        self._checks = 0

    async def check(self, name: str, password: str) -> bool:
        if self._checks >= self._most:
            raise kernel.Unavailable("too many logins at once; try again")
        self._checks += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._users.check, name, password)
        finally:
            self._checks -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kernel_streams.users",
        description="Add or replace a user of a users file for `kernel serve --streams-users FILE`. The "
                    "password is read from the terminal, or from standard input when it is not a terminal.",
    )
    parser.add_argument("file", metavar="FILE", type=Path, help="the users file (created if missing)")
    parser.add_argument("name", metavar="NAME", help="the user to add or replace")
    args = parser.parse_args(argv)
    path, name = args.file, args.name
    if not name or ":" in name or any(c.isspace() for c in name):
        parser.error("a user name may not be empty or hold ':' or spaces")
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass(f"password for {name}: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print(f"{parser.prog}: empty password refused", file=sys.stderr)
        return 1
    try:
        kept = []
        if path.exists():
            kept = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.partition(":")[0] != name]
        _replace(path, "\n".join([*kept, f"{name}:{hash_password(password)}"]) + "\n")
    except OSError as exc:
        print(f"{parser.prog}: cannot update {path}: {exc.strerror}", file=sys.stderr)
        return 1
    except UnicodeDecodeError:
        print(f"{parser.prog}: cannot update {path}: it is not a UTF-8 text file", file=sys.stderr)
        return 1
    return 0


def _replace(path: Path, text: str) -> None:
    """Write `path` whole or not at all, readable by its owner alone from the first byte
    (a server reading it meanwhile sees the old users or the new ones). A symlinked file
    (a mounted secret) is written where it points."""
    path = path.resolve()
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    kernel.fsync_dir(path.parent)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
