"""PTG's batch framing, ids, the byte budget of a message and the users file, without a server."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
import threading

import pytest
from kernel_streams import framing
from kernel_streams.budget import Budget
from kernel_streams.rest import cursors
from kernel_streams.users import Logins, Users, check_password, hash_password, load_users

import kernel


def _split(items, blob, sids=None):
    return [(s, i, bytes(d)) for s, i, d in framing.split_batch(items, blob, sids)]


def test_end_offsets_as_ptgctl_sends_them():
    assert _split([1, 3, 6], b"abbccc", ["cam"]) == [("cam", "*", b"a"), ("cam", "*", b"bb"), ("cam", "*", b"ccc")]


def test_start_offsets_as_the_readme_shows_them():
    assert _split([["l", 0], ["r", 2]], b"aabbb") == [("l", "*", b"aa"), ("r", "*", b"bbb")]


def test_entry_ids_and_single_stream_paths_win_over_header_streams():
    assert _split([["x", "5-1", 2], ["y", None, 3]], b"abc", ["cam"]) == [("cam", "5-1", b"ab"), ("cam", "*", b"c")]


@pytest.mark.parametrize(("items", "blob", "sids"), [
    ([2, 9], b"abc", ["s"]),            # past the end
    ([3, 2], b"abc", ["s"]),            # out of order
    ([0, 5], b"abc", ["s"]),            # start offset past the end
    ([2], b"abc", ["s"]),               # trailing bytes would be lost
    ([1, 3], b"abc", None),             # `*` needs stream ids
    ([["s", "bad id", 3]], b"abc", None),
    ([["s", "18446744073709551616-0", 3]], b"abc", None),  # past 64 bits
    ([["s", "1-18446744073709551616", 3]], b"abc", None),
    ([["s", True]], b"abc", None),
    ([["a b", 3]], b"abc", None),
    (["3"], b"abc", ["s"]),
])
def test_bad_batches_are_refused(items, blob, sids):
    with pytest.raises(framing.BadFrame):
        framing.split_batch(items, blob, sids)


def test_pack_gives_start_offsets():
    header, blob = framing.pack([("a", "1-0", b"xy"), ("b", "2-0", b"z")])
    assert header == b'[["a","1-0",0],["b","2-0",2]]' and blob == b"xyz"


@pytest.mark.parametrize("sid", ["", "*", "a+b", "a b", "x" * 300, "tab\there", "XMETA:cam"])
def test_bad_stream_ids(sid):
    with pytest.raises(kernel.BadRequest):
        framing.check_stream_id(sid)


def test_id_refusals_say_what_is_accepted():
    with pytest.raises(kernel.BadRequest, match="at most 256"):
        framing.check_stream_id("x" * 257)
    with pytest.raises(kernel.BadRequest, match=r"expected \*, \$, -, <ms> or <ms>-<seq>"):
        cursors(["cam"], "yesterday")
    assert cursors(["a", "b", "c"], "-+5+5-1") == {"a": "0", "b": "5", "c": "5-1"}


def test_entry_ids_are_two_unsigned_64_bit_numbers():
    assert framing.is_entry_id("18446744073709551615-18446744073709551615") and framing.is_entry_id("0")
    assert not framing.is_entry_id("18446744073709551616")
    assert not framing.is_entry_id("1-18446744073709551616")
    assert framing.add_id("18446744073709551615-*") == "18446744073709551615-*"


def test_password_hashes_and_the_dev_rule(tmp_path):
    encoded = hash_password("pw", log2_n=10)
    assert check_password("pw", encoded) and not check_password("pW", encoded)
    assert not check_password("pw", "scrypt$garbage")
    path = tmp_path / "users"
    path.write_text(f"# comment\n\nalice:{encoded}\n")
    users = load_users(str(path))
    assert Users(users, dev_login=False).check("alice", "pw")
    assert not Users(users, dev_login=False).check("bob", "bob")
    assert Users(users, dev_login=True).check("bob", "bob")
    assert not Users(users, dev_login=True).check("alice", "alice")  # a known user needs their password
    path.write_text("alice:plaintext\n")
    with pytest.raises(kernel.StartupError, match="line 1"):
        load_users(str(path))


def test_password_checks_keep_to_their_threads_and_refuse_past_the_queue():
    release = threading.Event()

    class Blocked(Users):
        def check(self, name: str, password: str) -> bool:
            release.wait(30)
            return True

    logins = Logins(Blocked({}, dev_login=False), threads=2, queue=3)

    async def run() -> list[object]:
        checks = [asyncio.ensure_future(logins.check("u", "pw")) for _ in range(40)]
        await asyncio.sleep(0)
        # the login threads are all busy; the default pool, which every plugin shares, is not
        assert await asyncio.wait_for(asyncio.to_thread(str, "free"), 10) == "free"
        release.set()
        return await asyncio.gather(*checks, return_exceptions=True)

    try:
        results = asyncio.run(run())
    finally:
        release.set()
        logins.close()
    assert results.count(True) == 5
    refused = [r for r in results if r is not True]
    assert len(refused) == 35 and all(isinstance(r, kernel.Unavailable) for r in refused)
    assert refused[0].status_code == 503 and refused[0].headers == {"Retry-After": "1"}


def test_the_users_command_has_help_and_explains_a_file_it_cannot_write(tmp_path):
    def users(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kernel_streams.users", *args], input="pw\n", text=True,
                              capture_output=True, check=False)

    helped = users("--help")
    assert helped.returncode == 0 and "FILE" in helped.stdout and "NAME" in helped.stdout
    failed = users(str(tmp_path / "nodir" / "u.txt"), "dave")
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines() == [
        f"python -m kernel_streams.users: cannot update {tmp_path / 'nodir' / 'u.txt'}: No such file or directory"]
    assert users(str(tmp_path / "u.txt"), "dave").returncode == 0
    assert Users(load_users(str(tmp_path / "u.txt")), dev_login=False).check("dave", "pw")
    # written whole, for its owner alone, nothing left beside it; through a symlink, where it points
    (tmp_path / "link.txt").symlink_to(tmp_path / "u.txt")
    assert users(str(tmp_path / "link.txt"), "erin").returncode == 0
    assert (tmp_path / "link.txt").is_symlink() and stat.S_IMODE((tmp_path / "u.txt").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.txt", "u.txt"]
    assert Users(load_users(str(tmp_path / "u.txt")), dev_login=False).check("dave", "pw")
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9:x\n")
    assert users(str(tmp_path / "latin.txt"), "dave").stderr.endswith("it is not a UTF-8 text file\n")


def test_a_message_carries_entries_within_the_byte_budget_none_skipped():
    sizes: dict[str, int] = {}
    budget = Budget(10, ["a", "b"], sizes)
    a = [("a", f"{i}-0", b"x" * 4) for i in range(1, 4)]
    b = [("b", f"{i}-0", b"y" * 2) for i in range(1, 4)]
    assert budget.wanted(100) == 1  # one per stream while sizes are unknown
    assert budget.fit(a + b) == [*a[:2], *b[:1]]  # b's second would pass 10 bytes, and nothing after it is taken
    assert budget.fit(a + b, newest=True) == [*a[2:], *b]  # each stream's newest
    assert budget.fit([("a", "1-0", b"z" * 50), *b]) == [("a", "1-0", b"z" * 50)]  # one entry whatever its size
    assert sizes == {"a": 50, "b": 2}
    # a stream cut from a message goes first in the next: large entries elsewhere do not hold it up for ever
    big = [("a", f"{i}-0", b"x" * 9) for i in range(1, 4)]
    turns = Budget(10, ["a", "b"], {})
    assert turns.fit(big[:2] + b) == big[:1]
    assert turns.fit(big[1:] + b) == b
    assert turns.fit(big[1:] + b) == big[1:2]
    assert budget.fit(b) == b and budget.size == 2 and budget.wanted(100) == 2
    # a one-off request leads with a stream chosen at random: asked again and again, each comes
    leads = {Budget(10, ["a", "b"], {}, by_chance=True).fit(big[:1] + b[:1], newest=True)[0][0] for _ in range(200)}
    assert leads == {"a", "b"}

    reads: list[int] = []

    async def read(n: int) -> list:
        reads.append(n)
        return [("c", f"{i}-0", b"x" * 4) for i in range(1, n + 1)]

    assert len(asyncio.run(Budget(10, ["c"], sizes).read(read, 100))) == 2 and reads == [1, 2]  # one to learn the size
    assert len(asyncio.run(Budget(10, ["c"], sizes).read(read, 100))) == 2 and reads == [1, 2, 2]  # known now
    # Sized by an earlier read's large entries, a read of small ones is done again at their size.
    sizes["c"] = 5
    assert len(asyncio.run(Budget(10, ["c"], sizes).read(read, 100))) == 2 and reads == [1, 2, 2, 2]
    sizes["c"] = 10
    assert len(asyncio.run(Budget(10, ["c"], sizes).read(read, 100))) == 2 and reads == [1, 2, 2, 2, 1, 2]
    reads.clear()

    async def few(n: int) -> list:
        reads.append(n)
        return [("c", "1-0", b"x")]

    assert len(asyncio.run(Budget(10, ["c"], {"c": 10}).read(few, 100))) == 1 and reads == [1, 10]
    reads.clear()
    assert len(asyncio.run(Budget(10, ["c"], {"c": 5}).read(few, 100))) == 1 and reads == [2]  # no more to read
    assert framing.id_before("5-3") == "5-2" and framing.id_before("5-0") == f"4-{2**64 - 1}"
    assert framing.id_before("0-0") == "0-0"


def test_the_byte_budget_is_a_size_as_every_layer_writes_one(tmp_path):
    k = kernel.create_kernel(["streams"], environ={"KERNEL_STREAMS_MAX_BYTES": "8M"},
                             options={"kernel": {"state_dir": str(tmp_path)}})
    assert k.config.section("streams").max_bytes == 8 << 20
