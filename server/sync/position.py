"""Where a kept snapshot stands among the database's transactions and in its WAL.

A change source must agree with the snapshots it is asked about: "the rows changed
between snapshot L and snapshot N" means the rows written by the transactions N sees
and L does not. So every kept snapshot records, in the statement that exports it,
which transactions it sees (``pg_current_snapshot()``: xmin, xmax and the ones still
running) and the WAL position just after it (``Position``). A transaction whose
commit PostgreSQL reports at a WAL position can then be placed exactly: seen by L,
seen by N, or by neither yet.

Transaction ids in the WAL are 32 bits wide; ``pg_current_snapshot()`` gives 64-bit
ones (with the wraparound epoch). ``widen`` places a 32-bit id next to a 64-bit one
known to be near it.
"""

from __future__ import annotations

from dataclasses import dataclass

XID_SPAN = 2**32
HALF_SPAN = 2**31


def parse_lsn(text: str) -> int:
    """A pg_lsn such as ``16/B374D848`` as a number of bytes."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def widen(xid: int, near: int) -> int:
    """The 64-bit transaction id whose low 32 bits are ``xid``, within 2^31 of ``near``."""
    offset = (xid - near) % XID_SPAN
    if offset >= HALF_SPAN:
        offset -= XID_SPAN
    return near + offset


@dataclass(frozen=True)
class Position:
    """A snapshot's transactions (64-bit ids) and the WAL position read just after it.

    ``lsn`` is where WAL was being inserted (on a standby: replayed) just after the
    snapshot was taken: the end of a record, past the commit record of every
    transaction the snapshot sees (a transaction is seen only after its commit
    record is written). ``standby``: taken on a server in recovery, where
    ``pg_current_snapshot()`` does not list the running transactions (it keeps them
    apart, as subtransactions), so ``xip`` cannot be trusted there.
    """

    xmin: int
    xmax: int
    xip: frozenset[int]
    lsn: int
    standby: bool = False

    @classmethod
    def parse(cls, snapshot: str, lsn: str | None, standby: bool) -> Position:
        """From ``pg_current_snapshot()::text`` (``xmin:xmax:xip,…``) and a pg_lsn."""
        xmin, xmax, xip = snapshot.split(":")
        running = frozenset(int(x) for x in xip.split(",") if x)
        return cls(int(xmin), int(xmax), running, parse_lsn(lsn) if lsn else 0, standby)

    def sees(self, xid: int) -> bool:
        """Whether this snapshot sees what the committed top-level transaction ``xid``
        (64 bits) wrote."""
        return xid < self.xmin or (xid < self.xmax and xid not in self.xip)

    def sees_the_same_as(self, other: Position) -> bool:
        """Whether both snapshots see exactly the same committed transactions, and so the
        same rows (never claimed on a standby, whose running transactions are not listed)."""
        return (
            not (self.standby or other.standby)
            and self.xmax == other.xmax
            and self.xip == other.xip
        )

    def to_json(self) -> dict[str, object]:
        return {
            "xmin": self.xmin,
            "xmax": self.xmax,
            "xip": sorted(self.xip),
            "lsn": self.lsn,
            "standby": self.standby,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Position:
        xip = data["xip"]
        assert isinstance(xip, list)
        return cls(
            _int(data["xmin"]),
            _int(data["xmax"]),
            frozenset(_int(x) for x in xip),
            _int(data["lsn"]),
            bool(data["standby"]),
        )


def _int(value: object) -> int:
    """A whole number read back from JSON (a bool is not one)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected a whole number, got {value!r}")
    return value
