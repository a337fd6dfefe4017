"""Whether the database can be used, and which of its failures waiting can mend.

A server that cannot reach its database serves its last figures and retries, which is right
while the trouble can pass: PostgreSQL refusing connections, starting up, a timeout. It is
wrong when the trouble lasts — a database or role that does not exist, a wrong password, a
host name that does not resolve, a malformed URL, tables that are not Proca's — and nothing
but a person can mend it: then `serve` ends at start with one line naming the flag and the
cause (``check_database``).

libpq reports connection failures as text, without the SQLSTATE the server sent, so they are
told apart by PostgreSQL's English messages; a failure they do not match counts as one that
can pass (the safe side: the server keeps retrying, and says why in its log).
"""

from __future__ import annotations

import re

import psycopg

from proca_stats.server.database import connection_options

# Failures of a connection attempt that no retry mends.
LASTING = re.compile(
    "|".join(
        (
            r'database "[^"]*" does not exist',
            r'role "[^"]*" does not exist',
            r"password authentication failed",
            r"(Ident|Peer|LDAP|RADIUS|PAM|certificate) authentication failed",
            r"no pg_hba\.conf entry",
            r"no password supplied",
            r"permission denied for database",
            r"is not permitted to log in",
            r"server does not support SSL",
            r"Name or service not known",  # EAI_NONAME; "Temporary failure" (EAI_AGAIN) may pass
            r"No address associated with hostname",
            r"nodename nor servname provided",
            r"invalid (integer|connection option|sslmode|value)",
            r"missing \"=\" after",
            r"invalid URI",
        )
    )
)

# What a calculation reads, by table (docs/figures.md); anything else in them is ignored.
READ_COLUMNS = {
    "campaigns": ("id", "status"),
    "action_pages": ("id", "campaign_id", "org_id", "extra_supporters"),
    "supporters": ("id", "fingerprint", "area", "processing_status", "dupe_rank", "updated_at"),
    "actions": (
        "id",
        "supporter_id",
        "action_type",
        "campaign_id",
        "action_page_id",
        "processing_status",
        "testing",
        "inserted_at",
        "updated_at",
    ),
}


class DatabaseUnusable(Exception):
    """The database cannot be used and waiting will not change it; the message names the
    flag and the cause."""


def cause(error: BaseException) -> str:
    """The failure in one line, as a person reads it: libpq's first line without its prefixes
    ("connection failed: ", "FATAL:  ")."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    for prefix in ("connection failed: ", "connection is bad: "):
        text = text.removeprefix(prefix)
    return re.sub(r"\bFATAL:\s+", "", text)


def lasting(error: BaseException) -> bool:
    """Whether waiting cannot mend this failure to connect."""
    return isinstance(error, psycopg.ProgrammingError) or bool(LASTING.search(str(error)))


def missing_parts(conn: psycopg.Connection) -> list[str]:
    """What the connected database lacks of the tables and columns a calculation reads, or
    may not read; empty when everything is there."""
    tables, unreadable, wanting = [], [], []
    for table, columns in READ_COLUMNS.items():
        row = conn.execute(
            "SELECT to_regclass(%s)::oid, has_table_privilege(to_regclass(%s), 'SELECT')",
            (table, table),
        ).fetchone()
        if row is None or row[0] is None:
            tables.append(table)
            continue
        if not row[1]:
            unreadable.append(table)
        present = {
            name
            for (name,) in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0"
                " AND NOT attisdropped",
                (row[0],),
            )
        }
        absent = [c for c in columns if c not in present]
        if absent:
            wanting.append(f"table {table} lacks {_some('column', absent)}")
    if unreadable:
        wanting.insert(0, f"no SELECT privilege on {', '.join(unreadable)}")
    if tables:
        wanting.insert(0, f"missing {_some('table', tables)}")
    return wanting


def _some(noun: str, names: list[str]) -> str:
    return f"{noun}{'s' * (len(names) > 1)} {', '.join(names)}"


def check_database(url: str, flag: str, connect_timeout: float) -> str | None:
    """Connect once and look at the tables: DatabaseUnusable when waiting cannot help.

    Returns None when the database is usable now, or the cause of a failure that can pass
    (the server then starts, not ready, and its sync retries until it succeeds).
    """
    try:
        conn = psycopg.connect(
            url, autocommit=True, **connection_options("proca-stats-check", connect_timeout)
        )
    except psycopg.Error as error:
        if lasting(error):
            raise DatabaseUnusable(f"{flag}: {cause(error)}") from None
        return cause(error)
    with conn:
        try:
            wanting = missing_parts(conn)
        except psycopg.Error as error:  # lost while looking: another try may do better
            return cause(error)
    if wanting:
        raise DatabaseUnusable(
            f"{flag}: {'; '.join(wanting)} (is it Proca's database? "
            "`proca-stats db init` creates the tables)"
        )
    return None
