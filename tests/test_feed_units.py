"""The change feed's pure parts: pgoutput's messages read back, transactions placed among
snapshots, 32-bit transaction ids widened."""

from __future__ import annotations

import struct

import pytest

from proca_stats.server.sync.feed import FeedMark, _Sorted
from proca_stats.server.sync.pgoutput import DecodeError, Transaction, Transactions
from proca_stats.server.sync.position import Position, format_lsn, parse_lsn, widen


def relation(oid: int, table: str, columns: list[str]) -> bytes:
    body = struct.pack("!I", oid) + b"public\0" + table.encode() + b"\0d"
    body += struct.pack("!H", len(columns))
    for name in columns:
        body += b"\0" + name.encode() + b"\0" + struct.pack("!Ii", 20, -1)
    return b"R" + body


def row(*values: int | None) -> bytes:
    data = struct.pack("!H", len(values))
    for value in values:
        if value is None:
            data += b"n"
        else:
            text = str(value).encode()
            data += b"t" + struct.pack("!I", len(text)) + text
    return data


def begin(xid: int) -> bytes:
    return b"B" + struct.pack("!QqI", 0x500, 0, xid)


def commit(lsn: int, end: int) -> bytes:
    return b"C" + struct.pack("!BQQq", 0, lsn, end, 0)


def test_rows_of_each_kind_give_their_ids_where_the_id_column_is() -> None:
    messages = [
        relation(7, "actions", ["ref", "id", "campaign_id"]),
        relation(8, "supporters", ["id"]),
        begin(41),
        b"I" + struct.pack("!I", 7) + b"N" + row(None, 10, 3),
        # An update that changed the key: the old key, then the new row.
        b"U" + struct.pack("!I", 7) + b"K" + row(None, 11, None) + b"N" + row(None, 12, 3),
        b"D" + struct.pack("!I", 8) + b"K" + row(5),
        b"Y" + b"ignored",
        commit(0x600, 0x640),
        begin(42),
        b"T" + struct.pack("!IB", 1, 0) + struct.pack("!I", 8),
        commit(0x700, 0x740),
    ]
    first, second = Transactions(limit=10).read(iter(messages))
    assert first == Transaction(41, 0x600, 0x640, {"actions": {10, 11, 12}, "supporters": {5}})
    assert (second.xid, second.truncated, second.tables()) == (42, {"supporters"}, {"supporters"})


def test_a_table_past_the_limit_is_noted_not_listed() -> None:
    messages = [relation(7, "actions", ["id"]), begin(1)]
    messages += [b"I" + struct.pack("!I", 7) + b"N" + row(i) for i in range(4)]
    (done,) = Transactions(limit=3).read(iter([*messages, commit(1, 2)]))
    assert (done.rows, done.overflowed) == ({}, {"actions"})


def test_an_unknown_message_is_refused() -> None:
    with pytest.raises(DecodeError):
        list(Transactions(limit=3).read(iter([b"Z"])))


def test_xids_widen_across_the_wraparound() -> None:
    assert widen(5, 2**32 + 10) == 2**32 + 5
    assert widen(2**32 - 3, 2**32 + 10) == 2**32 - 3  # just before the epoch turned
    assert widen(20, 2**32 + 10) == 2**32 + 20  # a little newer than the reference
    assert parse_lsn(format_lsn(0x16_B374D848)) == 0x16_B374D848


def test_transactions_are_sorted_by_the_snapshots_that_see_them() -> None:
    held = Position(xmin=100, xmax=110, xip=frozenset({105}), lsn=0x1000)
    new = Position(xmin=108, xmax=120, xip=frozenset({108, 115}), lsn=0x2000)
    sorted_out = _Sorted(FeedMark(0x800, 0x1000, held), new)
    for xid, rows, commit_lsn in [
        (101, {1}, 0x900),  # seen by the held snapshot: counted already
        (105, {2}, 0x1100),  # running when the held one was taken, seen by the new one
        (115, {3}, 0x1200),  # seen by neither: left in the slot
        (112, {4}, 0x1300),
    ]:
        sorted_out.add(Transaction(xid, commit_lsn, commit_lsn + 0x40, {"actions": rows}))
    assert (sorted_out.actions, sorted_out.carried, sorted_out.missed) == ({2, 4}, 0x1200, False)
    assert sorted_out.read_to == 0x1340
    # Seen by the held snapshot although its commit ends after what that one had read.
    sorted_out.add(Transaction(102, 0x1400, 0x1440, {"actions": {5}}))
    assert sorted_out.missed
