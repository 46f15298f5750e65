"""SQLAlchemy's aiosqlite adapter, one trip to the connection's thread per statement.

aiosqlite runs each SQLite connection in a thread of its own; every call is handed to it and its
answer handed back to the event loop. SQLAlchemy's adapter makes four such trips for a SELECT
(open a cursor, execute, fetch every row, close the cursor) and three for a write, and one for a
commit even when nothing was written. Each trip wakes the event loop, and on an incremental sync,
whose statements read or write a row or two, the trips cost more CPU than SQLite itself.

This adapter does the same work in one trip: the statement runs on a cursor of its own in the
connection's thread, which fetches every row (as SQLAlchemy's adapter did) and closes the cursor
before answering. A commit or rollback with no transaction open (pysqlite begins one only
before a write) makes no trip. Everything else (server-side cursors, connecting, closing,
isolation levels, errors) is SQLAlchemy's.

The adapter uses two internals of aiosqlite: ``Connection._execute`` (queue a function for the
connection's thread) and ``Connection._conn`` (the sqlite3 connection). SQLAlchemy's own adapter
uses both as well (it sets the isolation level through the queue); the tests of this module
fail if either goes away.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

#: What one statement's trip brings back: description, rows, rowcount and lastrowid.
_Answer = tuple[Any, Sequence[Any], int, int | None]


def _run_in_thread(
    connection: sqlite3.Connection, operation: str, parameters: Any, many: bool
) -> _Answer:
    """Run one statement on a cursor of its own and read everything SQLAlchemy asks after."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else ()
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor whose statement, rows and cleanup are one trip to the connection's thread."""

    __slots__ = ("_answer_description", "_answer_lastrowid", "_answer_rowcount", "_size")

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        # No aiosqlite cursor is opened here: each statement opens and closes its own.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._answer_description: Any = None
        self._answer_rowcount = -1
        self._answer_lastrowid: int | None = None
        self._size = 1

    @property
    def description(self) -> Any:
        return self._answer_description

    @property
    def rowcount(self) -> int:
        return self._answer_rowcount

    @property
    def lastrowid(self) -> Any:
        return self._answer_lastrowid

    @property
    def arraysize(self) -> int:
        return self._size

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._size = value

    async def _run(self, operation: Any, parameters: Any, many: bool) -> None:
        async with self._adapt_connection._execute_mutex:
            driver = self._connection
            answer: _Answer = await driver._execute(
                _run_in_thread, driver._conn, operation, parameters, many
            )
        description, rows, rowcount, lastrowid = answer
        self._answer_description = description
        self._answer_rowcount = rowcount
        self._answer_lastrowid = lastrowid
        self._rows = collections.deque(rows)

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        try:
            return await_(self._run(operation, parameters, False))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        try:
            return await_(self._run(operation, seq_of_parameters, True))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    async def _async_soft_close(self) -> None:
        # The thread closed the cursor already; the rows are held here.
        return

    def close(self) -> None:
        self._rows.clear()


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    """SQLAlchemy's aiosqlite connection with :class:`OneTripCursor` and trip-free no-op ends."""

    __slots__ = ()
    _cursor_cls = OneTripCursor  # type: ignore[assignment]  # a subclass of the declared one

    def _in_transaction(self) -> bool:
        # sqlite3 answers from the connection's autocommit flag, safe to read from this thread.
        driver = self._connection
        return bool(driver._connection) and bool(driver._conn.in_transaction)

    def commit(self) -> None:
        if self._in_transaction():
            super().commit()

    def rollback(self) -> None:
        if self._in_transaction():
            super().rollback()


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI module SQLAlchemy is given for SQLite: its connections are one-trip ones."""

    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        adapted = super().connect(*arg, **kw)
        return OneTripConnection(self, adapted._connection)


def one_trip_dbapi() -> OneTripDBAPI:
    """The module to pass as ``create_async_engine(..., module=...)`` for SQLite URLs."""
    return OneTripDBAPI(aiosqlite, sqlite3)
