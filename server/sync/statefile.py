"""The state file of a warm restart (warm.py says what it is for): its format, written
atomically, and read back only when it can be trusted.

One file per database, ``<system identifier>-<database name>.state`` in ``--state-dir``,
so two databases never share one. It is a header line — ``proca-stats state``, the
format version and the SHA-256 of the rest — then the state as JSON. It is written to a
temporary file in the same directory, flushed to disk, then renamed over the old one:
a crash leaves the old file or the new one, never a mixture. At start, a file that is
missing, not this program's, of another format version, whose checksum does not match
(truncated, or edited by hand) or that names another database gives one warning and a
cold start.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from proca_stats.server.state.counters import Increment
from proca_stats.server.sync.tally import CampaignTally
from proca_stats.server.sync.warm import HeldFigures, Identity

log = logging.getLogger(__name__)

MAGIC = "proca-stats state"
FORMAT = 1


@dataclass(frozen=True)
class Saved:
    """What a state file holds: the held figures, the action ids their snapshot confirmed
    (kept for late retries) and the Increments counted on top of them."""

    held: HeldFigures
    confirmed: frozenset[int]
    pending: tuple[Increment, ...]


class Untrusted(ValueError):
    """A state file that must not be used; the message says why."""


class StateFile:
    """The state files of one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, identity: Identity) -> Path:
        return (
            self.directory / f"{identity.system_identifier}-{quote(identity.name, safe='')}.state"
        )

    def write(self, identity: Identity, saved: Saved) -> None:
        """Replace the database's state file, atomically."""
        body = json.dumps(_encode(identity, saved), separators=(",", ":")).encode()
        header = f"{MAGIC} {FORMAT} {hashlib.sha256(body).hexdigest()}\n".encode()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.path(identity)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as file:
            file.write(header + body)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself reaches the disk
        finally:
            os.close(directory)

    def read(self, identity: Identity) -> Saved | None:
        """The database's saved state, or None (with one warning saying why) when there is
        none to trust. Temporary files that writers killed midway left are removed."""
        path = self.path(identity)
        for left in self.directory.glob(f".{glob.escape(path.name)}.*.tmp"):
            left.unlink(missing_ok=True)
        try:
            return _decode(identity, path.read_bytes())
        except FileNotFoundError:
            why = "there is none"
        except OSError as error:
            why = f"it cannot be read ({error.strerror})"
        except Untrusted as error:
            why = str(error)
        log.warning("warm start: not using the state file %s: %s; cold start", path, why)
        return None


def _encode(identity: Identity, saved: Saved) -> dict[str, Any]:
    held = saved.held
    return {
        "database": {
            "system_identifier": identity.system_identifier,
            "name": identity.name,
            "oid": identity.oid,
        },
        "taken_at": held.taken_at.isoformat(),
        # Wall-clock time, so that the safety net's interval runs on while the server is down.
        "full_at": (datetime.now(UTC) - timedelta(seconds=held.full_age)).isoformat(),
        "source": held.source,
        "campaigns": [
            [
                campaign_id,
                held.statuses.get(campaign_id),
                tally.supporters,
                tally.paired,
                list(tally.by_org.items()),
                list(tally.by_area.items()),
                list(tally.actions.items()),
            ]
            for campaign_id, tally in held.tallies.items()
        ],
        "pages": [[page_id, *page] for page_id, page in held.pages.items()],
        "stale": sorted(held.stale),
        "confirmed": sorted(saved.confirmed),
        "pending": [
            [i.campaign_id, i.org_id, i.action_type, i.area, i.new_supporter, i.action_id]
            for i in saved.pending
        ],
    }


def _decode(identity: Identity, content: bytes) -> Saved:
    header, newline, body = content.partition(b"\n")
    words = header.decode(errors="replace").rsplit(" ", 2)
    if not newline or len(words) != 3 or words[0] != MAGIC or not words[1].isdigit():
        raise Untrusted("it is not a proca-stats state file")
    if int(words[1]) != FORMAT:
        age = "an older" if int(words[1]) < FORMAT else "a newer"
        raise Untrusted(f"it is of {age} format ({words[1]}; this version reads {FORMAT})")
    if hashlib.sha256(body).hexdigest() != words[2]:
        raise Untrusted("its checksum does not match (truncated, or changed since written)")
    try:
        data = json.loads(body)
        database = data["database"]
        written_for = Identity(database["system_identifier"], database["name"], database["oid"])
        if written_for != identity:
            raise Untrusted(
                f"it was written for another database ({written_for.name}, system identifier "
                f"{written_for.system_identifier}, oid {written_for.oid})"
            )
        return _saved(data)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        if isinstance(error, Untrusted):
            raise
        raise Untrusted(f"its content is not a state ({type(error).__name__}: {error})") from None


def _saved(data: dict[str, Any]) -> Saved:
    tallies: dict[int, CampaignTally] = {}
    statuses: dict[int, int] = {}
    for campaign_id, status, supporters, paired, by_org, by_area, actions in data["campaigns"]:
        tallies[int(campaign_id)] = CampaignTally(
            int(supporters),
            {int(org): int(n) for org, n in by_org},
            {str(area): int(n) for area, n in by_area},
            {str(kind): int(n) for kind, n in actions},
            paired=int(paired),
        )
        if status is not None:
            statuses[int(campaign_id)] = int(status)
    held = HeldFigures(
        taken_at=datetime.fromisoformat(data["taken_at"]),
        tallies=tallies,
        statuses=statuses,
        pages={
            int(page_id): (int(c), None if org is None else int(org), int(extra))
            for page_id, c, org, extra in data["pages"]
        },
        source=dict(data["source"]),
        full_age=(datetime.now(UTC) - datetime.fromisoformat(data["full_at"])).total_seconds(),
        stale=frozenset(int(c) for c in data["stale"]),
    )
    pending = tuple(
        Increment(int(c), int(org), str(kind), area, bool(new), int(action_id))
        for c, org, kind, area, new, action_id in data["pending"]
    )
    return Saved(held, frozenset(int(i) for i in data["confirmed"]), pending)
