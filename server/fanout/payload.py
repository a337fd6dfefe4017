"""The text of the fan-out's NOTIFY messages: Increments in, payloads out, and back.

A payload is compact ASCII JSON, so it is valid whatever the database's
encoding and its length in characters is its length in bytes::

    {"r": replica, "n": number, "t": accepted_at,
     "i": [[campaign, org, action_type, area, new_supporter, action_id], ...], "x": xid}

``r`` tells a replica its own messages apart; ``n`` numbers a replica's
payloads, which also keeps two payloads of one transaction from being
identical (PostgreSQL delivers identical payloads of one transaction once);
``t`` is when the oldest Increment of the payload was accepted (Unix time), for
the delivery-latency histogram; ``x`` is the id of the transaction that sent
it, which only that transaction knows (``pg_current_xact_id()``): PostgreSQL
adds it as it sends the payload (``TAGGED``). A replica whose snapshot saw that
transaction commit holds the actions of its Increments already (held.py in
the sync). A payload without ``x`` (from an older replica) is still valid.
PostgreSQL refuses payloads of 8000 bytes or more, so a batch is split into as
many payloads as it needs, leaving room for ``x``.

Anyone who may NOTIFY on the channel can send a payload, so decoding checks
every field with the Increment RPC's own validation and refuses the whole
payload otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from proca_stats.contract.v1 import stats_pb2
from proca_stats.server.state.counters import Increment
from proca_stats.server.state.validation import increment_from

MAX_PAYLOAD_BYTES = 7999  # PostgreSQL: "payload string too long" from 8000 on
# A payload as sent, in SQL: its closing brace replaced by the sending transaction's id.
TAGGED = """left(payload, -1) || ',"x":' || pg_current_xact_id() || '}'"""
TAG_BYTES = len(',"x":18446744073709551615')  # the most TAGGED adds (xid8 is 64 bits)


class PayloadError(ValueError):
    """A message on the channel that is not a fan-out payload."""


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded payload."""

    replica: str
    number: int
    accepted_at: float
    increments: list[Increment]
    transaction: int | None = None  # the sending transaction's id, when tagged


def _item(inc: Increment) -> str:
    fields = [
        inc.campaign_id,
        inc.org_id,
        inc.action_type,
        inc.area,
        int(inc.new_supporter),
        inc.action_id,
    ]
    return json.dumps(fields, separators=(",", ":"))


def sender_prefix(replica: str) -> str:
    """How every payload of ``replica`` begins: a replica skips its own without decoding them."""
    return json.dumps({"r": replica}, separators=(",", ":"))[:-1] + ","


def _header(replica: str, number: int, accepted_at: float) -> str:
    head = json.dumps({"r": replica, "n": number, "t": accepted_at}, separators=(",", ":"))
    return head[:-1] + ',"i":['


def encode(
    replica: str,
    first_number: int,
    accepted_at: float,
    increments: Sequence[Increment],
    limit: int = MAX_PAYLOAD_BYTES - TAG_BYTES,
) -> list[str]:
    """The payloads that carry ``increments``, in order, each at most ``limit`` bytes
    (untagged: with room for ``TAGGED`` by default).

    Payloads are numbered from ``first_number`` on. Every valid Increment fits
    in one payload with room to spare (its strings are capped), so splitting
    between Increments always works.
    """
    payloads: list[str] = []
    items: list[str] = []
    size = 0
    header = _header(replica, first_number, accepted_at)
    for inc in increments:
        item = _item(inc)
        added = len(item) + (1 if items else 0)
        if items and len(header) + size + added + 2 > limit:
            payloads.append(header + ",".join(items) + "]}")
            header = _header(replica, first_number + len(payloads), accepted_at)
            items, size, added = [], 0, len(item)
        if len(header) + added + 2 > limit:
            raise ValueError(f"one Increment needs {len(item)} bytes, over the {limit} limit")
        items.append(item)
        size += added
    if items:
        payloads.append(header + ",".join(items) + "]}")
    return payloads


def _increment(fields: Any) -> Increment:
    """The Increment a payload item reports.

    JSON has no types of its own, so their shape is checked here; the rules of
    the contract are the Increment RPC's own validation (``increment_from``).
    """
    if type(fields) is not list or len(fields) != 6:
        raise PayloadError(f"expected an Increment of 6 fields, got {fields!r}")
    campaign, org, action_type, area, new, action = fields
    if not (
        type(campaign) is int
        and type(org) is int
        and type(action_type) is str
        and (area is None or (type(area) is str and area))
        and type(new) is int
        and new in (0, 1)
        and (action is None or type(action) is int)
    ):
        raise PayloadError(f"expected an Increment's fields, got {fields!r}")
    try:
        return increment_from(
            stats_pb2.IncrementRequest(
                campaign_id=campaign,
                org_id=org,
                action_type=action_type,
                area=area,
                new_supporter=bool(new),
                action_id=action,
            )
        )
    except ValueError as error:  # out of int64's range, or a rule broken (ValidationError)
        raise PayloadError(f"not a valid Increment: {error}") from None


def decode(payload: str) -> Message:
    """The message a payload carries; PayloadError when it is not one."""
    try:
        data = json.loads(payload)
    except ValueError as error:
        raise PayloadError(f"not JSON: {error}") from None
    if type(data) is not dict:
        raise PayloadError("expected a JSON object")
    replica, number, accepted_at, items, xid = (data.get(k) for k in ("r", "n", "t", "i", "x"))
    if type(replica) is not str or not replica:
        raise PayloadError("expected a replica id")
    if type(number) is not int or type(items) is not list:
        raise PayloadError("expected a payload number and a list of Increments")
    if not isinstance(accepted_at, int | float) or isinstance(accepted_at, bool):
        raise PayloadError(f"expected a time, got {accepted_at!r}")
    if xid is not None and (type(xid) is not int or not 0 <= xid < 2**64):
        raise PayloadError(f"expected a transaction id, got {xid!r}")
    increments = [_increment(item) for item in items]
    return Message(replica, number, float(accepted_at), increments, xid)
