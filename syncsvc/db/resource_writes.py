"""The write path of synced resources; each function takes an ``AsyncSession``, none commits.

It is built for throughput: a page of resources costs a fixed handful of statements whatever its
size (one read of the stored hashes, one history copy, and its share of a group's seq reservation
and write), those statements go to the driver as they are, rows are plain tuples rather than ORM
objects, and bodies are the canonical bytes as they were hashed. Flagging resources deleted takes
new seqs the same way.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, NamedTuple, TypeVar

import asyncpg
from sqlalchemy import String, Table, bindparam, insert, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.errors import Transient

from .base import rowcount
from .models.records import Resource, ResourceHistory

#: Ids per ``IN (...)`` list: PostgreSQL allows 32,767 bind parameters per statement and SQLite
#: 32,766.
IN_CHUNK = 5_000

T = TypeVar("T")

#: The Core table: executemany statements on it skip the ORM's per-row bookkeeping.
RESOURCES: Table = Resource.__table__  # type: ignore[assignment]  # a mapped class's table

_RESOURCE_COLUMNS = (
    "connection_id",
    "resource_type",
    "resource_id",
    "version_id",
    "last_updated",
    "body",
    "content_hash",
    "seq",
    "stored_at",
    "deleted_at",
    "deleted_reason",
)
_KEY = ("connection_id", "resource_type", "resource_id")
#: What a version of a resource carries into history (``replaced_at`` is added).
_HISTORY_COLUMNS = (
    "connection_id",
    "resource_type",
    "resource_id",
    "version_id",
    "last_updated",
    "body",
    "content_hash",
    "seq",
    "stored_at",
)


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ResourceRow(NamedTuple):
    """One row of ``resources``, its fields in the table's column order (as the driver takes it)."""

    connection_id: str
    resource_type: str
    resource_id: str
    version_id: str | None
    last_updated: dt.datetime | None
    body: bytes
    content_hash: str
    seq: int
    stored_at: dt.datetime
    deleted_at: dt.datetime | None
    deleted_reason: str | None


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """What the write path needs to know about a stored resource to compare a new one."""

    content_hash: str
    deleted_reason: str | None


# --- resources -------------------------------------------------------------------------------


def _pg_lookup(
    columns: Sequence[str], *, ids: str = ":ids", cid: str = ":cid", rtype: str = ":rtype"
) -> str:
    """PostgreSQL: ``columns`` of a connection's resources of one type with the ids ``ids``.

    ``ids``, ``cid`` and ``rtype`` are the placeholders (named for SQLAlchemy, numbered for
    the driver).

    One primary-key probe per id, whatever the planner knows: a ``LIMIT`` in a lateral subquery
    cannot be flattened into a join. Before a fresh table has statistics PostgreSQL plans
    ``resource_id = ANY(...)`` (or an ``IN`` list) as a filter over the connection's whole type,
    which makes a large first sync quadratic. One array parameter also keeps the SQL text the
    same for every page, so asyncpg prepares it once.
    """
    picked = ", ".join(f"r.{name}" for name in columns)
    # Column names are module constants; every value is bound.
    return (
        f"SELECT {picked} FROM unnest(CAST({ids} AS VARCHAR[])) AS u(id) "  # noqa: S608
        f"CROSS JOIN LATERAL (SELECT * FROM resources WHERE connection_id = {cid} "
        f"AND resource_type = {rtype} AND resource_id = u.id LIMIT 1) AS r"
    )


# The write path's own queries go to the driver as they are (see _driver): they run for every
# page, and through SQLAlchemy's aiosqlite adapter each costs four trips to the driver's thread,
# every one waiting its turn on a busy event loop.
_PG_STORED_VERSIONS = _pg_lookup(
    ("resource_id", "content_hash", "deleted_reason"), ids="$1", cid="$2", rtype="$3"
)
_SQLITE_STORED_VERSIONS = (
    "SELECT resource_id, content_hash, deleted_reason FROM resources "
    "WHERE connection_id = ? AND resource_type = ? AND resource_id IN "
)


async def stored_versions(
    session: AsyncSession, connection_id: str, resource_type: str, resource_ids: Sequence[str]
) -> dict[str, StoredVersion]:
    """The stored hash and deletion flag of each of ``resource_ids`` that is stored."""
    driver = await _driver(session)
    postgres = _dialect(session) == "postgresql"
    found: dict[str, StoredVersion] = {}
    for chunk in _chunks(resource_ids, IN_CHUNK):
        if postgres:
            rows = await driver.fetch(
                _PG_STORED_VERSIONS, list(chunk), connection_id, resource_type
            )
        else:
            marks = ", ".join("?" for _ in chunk)
            rows = await driver.execute_fetchall(
                f"{_SQLITE_STORED_VERSIONS}({marks})", (connection_id, resource_type, *chunk)
            )
        for resource_id, content_hash, deleted_reason in rows:
            found[str(resource_id)] = StoredVersion(
                str(content_hash), None if deleted_reason is None else str(deleted_reason)
            )
    return found


#: One statement for any number of connections, whether or not each has written before, sent to
#: the driver as it is (see stored_versions). Ids are sorted, so concurrent writers lock cursor
#: rows in one order.
_CURSOR_UPSERT = (
    " ON CONFLICT (connection_id) DO UPDATE SET "
    "last_seq = resource_cursors.last_seq + excluded.last_seq RETURNING connection_id, last_seq"
)
_SQLITE_BUMP_CURSORS = "INSERT INTO resource_cursors (connection_id, last_seq) VALUES "
_PG_BUMP_CURSORS = (
    "INSERT INTO resource_cursors (connection_id, last_seq) "  # noqa: S608 - constants only
    "SELECT * FROM unnest($1::varchar[], $2::bigint[])" + _CURSOR_UPSERT
)


async def reserve_seqs_many(session: AsyncSession, counts: Mapping[str, int]) -> dict[str, int]:
    """Reserve ``counts[c]`` consecutive seqs of each connection ``c``; the first of each.

    The cursor rows stay locked until the caller's transaction ends, so a connection's seqs
    become visible in order.
    """
    ids = sorted(counts)
    if not ids:
        return {}
    driver = await _driver(session)
    if _dialect(session) == "postgresql":
        rows = await driver.fetch(_PG_BUMP_CURSORS, ids, [counts[cid] for cid in ids])
    else:
        marks = ", ".join("(?, ?)" for _ in ids)
        rows = await driver.execute_fetchall(
            _SQLITE_BUMP_CURSORS + marks + _CURSOR_UPSERT,
            [value for cid in ids for value in (cid, counts[cid])],
        )
    return {str(cid): int(last) - counts[str(cid)] + 1 for cid, last in rows}


async def reserve_seqs(session: AsyncSession, connection_id: str, count: int) -> int:
    """Reserve ``count`` consecutive seqs of one connection; returns the first."""
    return (await reserve_seqs_many(session, {connection_id: count}))[connection_id]


async def _driver(session: AsyncSession) -> Any:
    """The DBAPI driver's own connection (aiosqlite or asyncpg), inside the session's transaction.

    SQLAlchemy's asyncpg adapter sends ``BEGIN`` with the first statement it executes itself;
    a statement sent to asyncpg before that would run, and commit, on its own. So a transaction
    that has not begun at the driver yet is begun through SQLAlchemy first. (pysqlite begins
    implicitly before the first write, as SQLAlchemy expects.)
    """
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver: Any = raw.driver_connection
    if _dialect(session) == "postgresql" and not driver.is_in_transaction():
        await connection.exec_driver_sql("SELECT 1")
    return driver


_HISTORY_INSERT = f"INSERT INTO resource_history ({', '.join(_HISTORY_COLUMNS)}, replaced_at) "
_PG_COPY_TO_HISTORY = text(
    f"{_HISTORY_INSERT} SELECT *, :replaced_at FROM ({_pg_lookup(_HISTORY_COLUMNS)}) AS old"  # noqa: S608
).bindparams(
    bindparam("ids", type_=postgresql.ARRAY(String())),
    bindparam("replaced_at", type_=Resource.stored_at.type),
)


async def copy_to_history(
    session: AsyncSession,
    connection_id: str,
    resource_type: str,
    resource_ids: Sequence[str],
    *,
    now: dt.datetime,
) -> None:
    """Copy the stored versions of ``resource_ids`` into history, inside the database."""
    postgres = _dialect(session) == "postgresql"
    columns = [getattr(Resource, name) for name in _HISTORY_COLUMNS]
    for chunk in _chunks(resource_ids, IN_CHUNK):
        if postgres:
            await session.execute(
                _PG_COPY_TO_HISTORY,
                {
                    "ids": list(chunk),
                    "cid": connection_id,
                    "rtype": resource_type,
                    "replaced_at": now,
                },
            )
            continue
        source = select(*columns, bindparam("replaced_at", now, type_=Resource.stored_at.type))
        source = source.where(
            Resource.connection_id == connection_id,
            Resource.resource_type == resource_type,
            Resource.resource_id.in_(chunk),
        )
        await session.execute(
            insert(ResourceHistory).from_select([*_HISTORY_COLUMNS, "replaced_at"], source)
        )


_UPDATED = [name for name in _RESOURCE_COLUMNS if name not in _KEY]
_SQLITE_INSERT = (
    f"INSERT INTO resources ({', '.join(_RESOURCE_COLUMNS)}) "  # noqa: S608 - module constants
    f"VALUES ({', '.join('?' for _ in _RESOURCE_COLUMNS)})"
)
_SQLITE_UPSERT = f"{_SQLITE_INSERT} ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET " + ", ".join(
    f"{name} = excluded.{name}" for name in _UPDATED
)
#: The upsert's array columns (bodies travel as one joined value).
_PG_TYPES = {
    "connection_id": "varchar",
    "resource_type": "varchar",
    "resource_id": "varchar",
    "version_id": "varchar",
    "last_updated": "timestamptz",
    "content_hash": "varchar",
    "seq": "bigint",
    "stored_at": "timestamptz",
    "deleted_at": "timestamptz",
    "deleted_reason": "varchar",
}


def _sqlite_time(value: dt.datetime) -> str:
    # What UTCDateTime stores on SQLite: UTC without an offset, SQLAlchemy's text format.
    # isoformat is about twice as fast as strftime; the slice drops the "+00:00".
    if value.tzinfo is not dt.UTC:
        value = value.astimezone(dt.UTC)
    return value.isoformat(" ", "microseconds")[:26]


def _sqlite_rows(rows: Sequence[ResourceRow]) -> list[tuple[Any, ...]]:
    """``rows`` as SQLite takes them: times as text (a page's rows share ``stored_at``)."""
    texts: dict[dt.datetime, str] = {}

    def text_of(value: dt.datetime | None) -> str | None:
        if value is None:
            return None
        found = texts.get(value)
        if found is None:
            found = texts[value] = _sqlite_time(value)
        return found

    return [
        (
            cid,
            rtype,
            rid,
            version,
            text_of(updated),
            body,
            digest,
            seq,
            text_of(stored),
            text_of(deleted),
            reason,
        )
        for cid, rtype, rid, version, updated, body, digest, seq, stored, deleted, reason in rows
    ]


#: PostgreSQL gets an upsert's bodies as one value and each row's place in it: asyncpg takes
#: about 2.3 us a row to encode a ``bytea[]`` on the event loop, against a tenth of that for one
#: joined ``bytea`` and two ``int[]`` (PostgreSQL cuts them out again with ``substr``).
_PG_UNNESTED = tuple(name for name in _RESOURCE_COLUMNS if name != "body")
_BODY_COLUMN = _RESOURCE_COLUMNS.index("body")
_PG_ARRAYS = [f"${i}::{_PG_TYPES[name]}[]" for i, name in enumerate(_PG_UNNESTED, 1)]
_PG_BODIES = len(_PG_UNNESTED) + 3
_PG_UPSERT = (
    f"INSERT INTO resources ({', '.join(_RESOURCE_COLUMNS)}) SELECT "  # noqa: S608 - constants
    + ", ".join(
        f"substr(${_PG_BODIES}::bytea, r.body_at, r.body_length)" if name == "body" else f"r.{name}"
        for name in _RESOURCE_COLUMNS
    )
    + f" FROM unnest({', '.join(_PG_ARRAYS)}, ${_PG_BODIES - 2}::int[], ${_PG_BODIES - 1}::int[]) "
    f"AS r({', '.join(_PG_UNNESTED)}, body_at, body_length) "
    f"ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in _UPDATED)
)


async def write_rows(
    session: AsyncSession, absent: Sequence[ResourceRow], present: Sequence[ResourceRow]
) -> None:
    """Write rows whose seqs are reserved (see :func:`reserve_seqs_many`).

    ``absent`` rows are of resources the table does not hold: they are inserted without a
    conflict check, and should one be there after all the write fails rather than overwrite
    it. ``present`` rows replace the stored ones (or are inserted).

    On PostgreSQL the absent rows are a binary ``COPY``: against an ``INSERT ... SELECT FROM
    unnest(...)`` it took half the event loop's time (no arrays to encode) and a sixth less of
    the database's (rows go into pages several at a time), with no conflict check to pay for.
    """
    if not absent and not present:
        return
    driver = await _driver(session)
    if _dialect(session) == "postgresql":
        if absent:
            try:
                await driver.copy_records_to_table(
                    "resources", records=absent, columns=_RESOURCE_COLUMNS
                )
            except asyncpg.UniqueViolationError as exc:
                raise _stored_meanwhile() from exc
        if present:
            columns = [list(column) for column in zip(*present, strict=True)]
            bodies: list[bytes] = columns.pop(_BODY_COLUMN)
            lengths = list(map(len, bodies))
            starts = list(accumulate(lengths, initial=1))  # substr counts from 1
            starts.pop()
            await driver.execute(_PG_UPSERT, *columns, starts, lengths, b"".join(bodies))
        return
    if absent:
        try:
            await driver.executemany(_SQLITE_INSERT, _sqlite_rows(absent))
        except sqlite3.IntegrityError as exc:
            if exc.sqlite_errorname != "SQLITE_CONSTRAINT_PRIMARYKEY":
                raise
            raise _stored_meanwhile() from exc
    if present:
        await driver.executemany(_SQLITE_UPSERT, _sqlite_rows(present))


def _stored_meanwhile() -> Transient:
    # Only a second writer for the same connection can store what this one found missing (a
    # lease lost mid-run): the run stops and the next one looks everything up.
    return Transient(
        "A resource this sync found missing was stored by another writer meanwhile; "
        "the connection is synced again later",
        reason="concurrent_write",
    )


async def flag_deleted(
    session: AsyncSession,
    connection_id: str,
    resource_type: str,
    resource_ids: Sequence[str],
    *,
    reason: str,
    now: dt.datetime,
) -> int:
    """Flag resources deleted (kept, not erased), each with a new seq; returns how many."""
    if not resource_ids:
        return 0
    first = await reserve_seqs(session, connection_id, len(resource_ids))
    # Core, not ORM: an executemany UPDATE through the ORM wants whole primary keys per row.
    table = RESOURCES
    statement = (
        update(table)
        .where(
            table.c.connection_id == connection_id,
            table.c.resource_type == resource_type,
            table.c.resource_id == bindparam("rid"),
        )
        .values(seq=bindparam("new_seq"), deleted_at=now, deleted_reason=reason, stored_at=now)
    )
    params = [{"rid": rid, "new_seq": first + i} for i, rid in enumerate(resource_ids)]
    result = await session.execute(statement, params)
    return rowcount(result)
