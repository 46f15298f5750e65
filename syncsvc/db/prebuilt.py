"""Statements built once per process for the writes every sync makes.

An ORM ``update(Model).where(...).values(**fields)`` built per call coerces every value, builds a
cache key and goes through the ORM's bulk-update path before the compiled SQL is found in the
cache: on an incremental sync that cost more CPU than the round trip itself. These statements
are built once, against the table, with bound parameters, so a call only binds its values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Table, Update, and_, bindparam, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import Insert

from .base import Base, rowcount


def table_of(model: type[Base]) -> Table:
    """The Core table of a mapped class."""
    return Base.metadata.tables[str(model.__tablename__)]


class UpdateBy:
    """UPDATEs of one table's row by its key columns: one statement per set of columns set.

    ``guard``: a further condition every UPDATE carries (its own bound parameters are given to
    :meth:`execute` as ``guard_params``), so the row is written only while it holds.
    """

    def __init__(
        self, model: type[Base], *keys: str, guard: ColumnElement[bool] | None = None
    ) -> None:
        self._table = table_of(model)
        self._keys = keys
        self._guard = guard
        self._built: dict[tuple[str, ...], Update] = {}

    def _statement(self, names: tuple[str, ...]) -> Update:
        statement = self._built.get(names)
        if statement is None:
            table = self._table
            statement = (
                update(table)
                .where(and_(*(table.c[key] == bindparam(f"key_{key}") for key in self._keys)))
                .values(
                    {name: bindparam(f"set_{name}", type_=table.c[name].type) for name in names}
                )
            )
            if self._guard is not None:
                statement = statement.where(self._guard)
            self._built[names] = statement
        return statement

    async def execute(
        self,
        session: AsyncSession,
        keys: Mapping[str, Any],
        values: Mapping[str, Any],
        guard_params: Mapping[str, Any] | None = None,
    ) -> int:
        """Set ``values`` on the row with ``keys`` (while ``guard`` holds); rows changed."""
        params = {f"set_{name}": value for name, value in values.items()}
        params.update({f"key_{key}": keys[key] for key in self._keys})
        if guard_params:
            params.update(guard_params)
        result = await session.execute(self._statement(tuple(sorted(values))), params)
        return rowcount(result)


class UpsertBy:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE`` of one table's row by its unique key columns.

    One statement per dialect and set of columns written: the ``excluded`` alias and the
    multi-column VALUES a statement built per call carries cost more CPU to build and to find
    in the compiled cache than the round trip itself.
    """

    def __init__(self, model: type[Base], *keys: str) -> None:
        self._table = table_of(model)
        self._keys = keys
        self._built: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Insert] = {}

    def _statement(self, dialect: str, names: tuple[str, ...], defaults: tuple[str, ...]) -> Insert:
        built = self._built.get((dialect, names, defaults))
        if built is None:
            table = self._table
            make = postgresql.insert if dialect == "postgresql" else sqlite.insert
            columns = (*self._keys, *defaults, *names)
            statement = make(table).values(
                {name: bindparam(name, type_=table.c[name].type) for name in columns}
            )
            built = statement.on_conflict_do_update(
                index_elements=[table.c[key] for key in self._keys],
                set_={name: statement.excluded[name] for name in names},
            )
            self._built[(dialect, names, defaults)] = built
        return built

    async def execute(
        self,
        session: AsyncSession,
        keys: Mapping[str, Any],
        values: Mapping[str, Any],
        *,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        """Insert the row with ``keys``, ``defaults`` and ``values``, or set ``values`` on it.

        ``defaults`` are written only when the row is new.
        """
        await self.execute_many(session, [(keys, values)], defaults=defaults)

    async def execute_many(
        self,
        session: AsyncSession,
        rows: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
        *,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        """:meth:`execute` for each ``(keys, values)``: one executemany per set of columns."""
        dialect = session.get_bind().dialect.name
        batches: dict[tuple[tuple[str, ...], tuple[str, ...]], list[dict[str, Any]]] = {}
        for keys, values in rows:
            first = {name: value for name, value in (defaults or {}).items() if name not in values}
            params = {**first, **values, **{key: keys[key] for key in self._keys}}
            batches.setdefault((tuple(sorted(values)), tuple(sorted(first))), []).append(params)
        for (names, first_names), params_list in batches.items():
            await session.execute(self._statement(dialect, names, first_names), params_list)
