"""What one GET response or pull message may carry: `max_bytes` of entries, or one entry
whatever its size. A client asking for `count` large entries gets fewer per message (PTG's
clients read the header) instead of making the server hold `count` x their size.

Redis cannot be asked for entries up to a number of bytes, so reads are sized by the
largest entry the last read of those streams brought (by any request: the store keeps it),
or by a read of one entry per stream first where none has; entries past the budget are let
go at once and read again for the next message.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from kernel_streams.store import Entry

#: A read from Redis of at most so many entries per stream.
Read = Callable[[int], Awaitable[list[Entry]]]


class Budget:
    """The byte budget of one request or pull socket over the streams `sids`. `sizes` is
    the largest entry of each stream's last read, shared by every budget, kept up to date."""

    def __init__(self, max_bytes: int, sids: list[str], sizes: dict[str, int], *, by_chance: bool = False) -> None:
        self.max_bytes = max_bytes
        #: A one-off request (not a pull, which takes turns) leads with a stream chosen at
        #: random when its entries do not all fit, so a client asking again and again for
        #: several streams' newest is not given the same one's every time.
        self._by_chance = by_chance
        self._streams = len(sids)
        self._sizes = sizes
        known = [sizes[s] for s in sids if s in sizes]
        #: The largest entry of the last read (of these streams, by anyone); None before the first.
        self.size: int | None = max(known) if known else None
        self._left_out: set[str] = set()

    def wanted(self, count: int) -> int:
        """Entries per stream a read may ask for: `count`, no more than the budget holds at
        the last read's largest entry, and one while no read has brought any."""
        if self.size is None:
            return 1
        return max(1, min(count, self.max_bytes // max(self.size * self._streams, 1)))

    async def read(self, read: Read, count: int) -> list[Entry]:
        """`read(n)` for up to `count` entries per stream within the budget (not cut to it:
        `fit` does that); while sizes are not known, a read of one per stream learns them.
        A read sized by larger entries than it brought (the streams' entries got smaller)
        is done again at the size they allow, so a client is not given fewer than it asked
        for while more would fit."""
        if self.size is None and count > 1:
            first = await read(1)
            self._note(first)
            if not first or self.wanted(count) == 1:
                return first
        wanted = self.wanted(count)
        entries = await read(wanted)
        if wanted < count and _has_more(entries, wanted):
            self._note(entries)
            if self.wanted(count) > wanted:
                entries = await read(self.wanted(count))
        return entries

    def fit(self, entries: list[Entry], *, newest: bool = False) -> list[Entry]:
        """The entries one message carries, in their order: each stream's first ones (its
        last with `newest`) while the total stays within the budget, a stream stopping at
        its first entry that does not fit (so none is skipped), and the first entry whatever
        its size. Streams left out of the last message go first, so none waits for ever
        behind another's large entries. Notes their largest size for the next read."""
        sizes = self._note(entries)
        if sum(sizes) <= self.max_bytes:
            self._left_out = set()
            return entries
        order = range(len(entries) - 1, -1, -1) if newest else range(len(entries))
        lead = random.choice(sorted({sid for sid, _, _ in entries})) if self._by_chance else None
        kept: list[int] = []
        cut: set[str] = set()
        total = 0
        for i in sorted(order, key=lambda i: (entries[i][0] not in self._left_out, entries[i][0] != lead)):
            if entries[i][0] in cut or (kept and total + sizes[i] > self.max_bytes):
                cut.add(entries[i][0])
            else:
                kept.append(i)
                total += sizes[i]
        out = [entries[i] for i in sorted(kept)]
        self._left_out = cut - {sid for sid, _, _ in out}
        return out

    def _note(self, entries: list[Entry]) -> list[int]:
        sizes = [len(data) for _, _, data in entries]
        if sizes:
            self.size = max(sizes)
            largest: dict[str, int] = {}
            for (sid, _, _), size in zip(entries, sizes):
                if size > largest.get(sid, -1):
                    largest[sid] = size
            self._sizes.update(largest)
        return sizes


def _has_more(entries: list[Entry], wanted: int) -> bool:
    """Whether a read of `wanted` entries per stream filled one stream's share (so it may
    hold more)."""
    per_stream: dict[str, int] = {}
    for sid, _, _ in entries:
        per_stream[sid] = per_stream.get(sid, 0) + 1
    return wanted in per_stream.values()
