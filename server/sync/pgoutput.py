"""The messages of PostgreSQL's built-in logical decoding plugin, pgoutput, read back into
transactions: which rows of which tables each committed transaction wrote.

pgoutput (protocol version 1, PostgreSQL 10 and later) sends, per transaction, Begin,
then for each table a Relation message before its first row, then Insert, Update,
Delete and Truncate messages, then Commit; the format is PostgreSQL's "Logical
Replication Message Formats". Only the primary key is read back, a row's ``id``:
what the row now counts is read from the snapshots, not from the stream. A delete
carries the old row's key only (the tables keep REPLICA IDENTITY DEFAULT), which is
all that is needed. Reading these few messages here costs less than a dependency, and
keeps the decoding on an ordinary connection (feed.py says why).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

BEGIN = struct.Struct("!QqI")  # final (commit) LSN, commit time, xid
COMMIT = struct.Struct("!BQQq")  # flags, commit LSN, end LSN, commit time
INT16 = struct.Struct("!H")
INT32 = struct.Struct("!I")


class DecodeError(ValueError):
    """A message that is not pgoutput's protocol 1 as documented."""


@dataclass
class Transaction:
    """One committed transaction: its 32-bit xid, where its commit record starts and ends in
    the WAL, and the ids of the rows it wrote per table (a table left out past ``limit`` ids
    is in ``overflowed``, one truncated is in ``truncated``)."""

    xid: int
    commit_lsn: int = 0
    end_lsn: int = 0
    rows: dict[str, set[int]] = field(default_factory=dict)
    overflowed: set[str] = field(default_factory=set)
    truncated: set[str] = field(default_factory=set)

    def tables(self) -> set[str]:
        """Every table it wrote to."""
        return self.rows.keys() | self.overflowed | self.truncated


@dataclass(frozen=True)
class Relation:
    table: str
    key: int  # the position of the ``id`` column


def _string(data: bytes, at: int) -> tuple[str, int]:
    end = data.index(b"\0", at)
    return data[at:end].decode(), end + 1


def _relation(data: bytes) -> tuple[int, Relation]:
    (oid,) = INT32.unpack_from(data, 1)
    _namespace, at = _string(data, 5)
    table, at = _string(data, at)
    (columns,) = INT16.unpack_from(data, at + 1)  # after the replica identity byte
    at += 3
    for index in range(columns):
        name, at = _string(data, at + 1)  # after the column's flags
        if name == "id":
            return oid, Relation(table, index)
        at += 8  # type oid and modifier
    raise DecodeError(f"table {table} has no id column")


def _skip(data: bytes, at: int) -> int:
    """Where the TupleData column that starts at ``at`` ends."""
    kind = data[at]
    if kind in (0x6E, 0x75):  # 'n' null, 'u' unchanged TOAST value: no bytes follow
        return at + 1
    if kind not in (0x74, 0x62):  # 't' text, 'b' binary: a length, then the bytes
        raise DecodeError(f"unknown tuple column kind {kind!r}")
    length: int = INT32.unpack_from(data, at + 1)[0]
    return at + 5 + length


def _column(data: bytes, at: int, index: int) -> int | None:
    """The integer in column ``index`` of the TupleData at ``at`` (None when null)."""
    at += 2  # the column count
    for _ in range(index):
        at = _skip(data, at)
    if data[at] in (0x6E, 0x75):
        return None
    _skip(data, at)  # checks the kind
    (length,) = INT32.unpack_from(data, at + 1)
    return int(data[at + 5 : at + 5 + length])


def _tuple_end(data: bytes, at: int) -> int:
    """Where the TupleData that starts at ``at`` ends."""
    (columns,) = INT16.unpack_from(data, at)
    at += 2
    for _ in range(columns):
        at = _skip(data, at)
    return at


class Transactions:
    """Reads pgoutput messages in order and gives back each transaction at its commit."""

    def __init__(self, limit: int) -> None:
        """``limit``: the most row ids kept per table of one transaction."""
        self._limit = limit
        self._relations: dict[int, Relation] = {}
        self._open: Transaction | None = None

    def read(self, messages: Iterator[bytes]) -> Iterator[Transaction]:
        for data in messages:
            kind = data[:1]
            if kind == b"B":
                _, _, xid = BEGIN.unpack_from(data, 1)
                self._open = Transaction(xid)
            elif kind == b"C":
                _, commit_lsn, end_lsn, _ = COMMIT.unpack_from(data, 1)
                done = self._transaction()
                done.commit_lsn, done.end_lsn = commit_lsn, end_lsn
                self._open = None
                yield done
            elif kind == b"R":
                oid, relation = _relation(data)
                self._relations[oid] = relation
            elif kind in (b"I", b"U", b"D"):
                self._row(kind, data)
            elif kind == b"T":
                self._truncate(data)
            elif kind not in (b"Y", b"O", b"M"):  # types, origins, messages: not needed
                raise DecodeError(f"unknown pgoutput message {kind!r}")

    def _transaction(self) -> Transaction:
        if self._open is None:
            raise DecodeError("a change outside a transaction")
        return self._open

    def _row(self, kind: bytes, data: bytes) -> None:
        (oid,) = INT32.unpack_from(data, 1)
        relation = self._relations[oid]
        ids = []
        at = 5
        if data[at : at + 1] in (b"K", b"O"):  # the old key (or row) of an update or delete
            ids.append(_column(data, at + 1, relation.key))
            at = _tuple_end(data, at + 1)
        if kind != b"D":
            if data[at : at + 1] != b"N":
                raise DecodeError("an insert or update without its new row")
            ids.append(_column(data, at + 1, relation.key))
        self._add(relation.table, [i for i in ids if i is not None])

    def _add(self, table: str, ids: list[int]) -> None:
        transaction = self._transaction()
        if table in transaction.overflowed:
            return
        rows = transaction.rows.setdefault(table, set())
        rows.update(ids)
        if len(rows) > self._limit:
            del transaction.rows[table]
            transaction.overflowed.add(table)

    def _truncate(self, data: bytes) -> None:
        (count,) = INT32.unpack_from(data, 1)
        for index in range(count):
            (oid,) = INT32.unpack_from(data, 6 + 4 * index)  # after the options byte
            self._transaction().truncated.add(self._relations[oid].table)
