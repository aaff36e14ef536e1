"""A read statement compiled once, run on a pooled DBAPI connection: for the hook's hot path.

SQLAlchemy's per-call execution machinery (events, execution context, result wrapping) cost
several times the query itself on the patient-view path. Here the statement is compiled once per
engine, parameters go through the columns' own bind processors (so a datetime is stored and
compared exactly as SQLAlchemy writes it), and the row comes straight from the DBAPI cursor.
No ``BEGIN`` is sent: on SQLite (autocommit at the DBAPI level, see database.py) the single
SELECT runs in its own read transaction and never takes the write lock; on PostgreSQL the
transaction psycopg opens is rolled back when the connection returns to the pool.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Engine, Select


class PreparedRead:
    """``first(params)``: the first row of ``statement`` with ``params`` bound, or None."""

    def __init__(self, engine: Engine, statement: Select[Any]) -> None:
        dialect = engine.dialect
        compiled = statement.compile(dialect=dialect)
        self._engine = engine
        self._compiled = compiled
        self._sql = str(compiled)
        self._order = tuple(compiled.positiontup or ()) if compiled.positional else None
        self._processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.bind_processor(dialect)
            if processor is not None:
                self._processors[name] = processor

    def first(self, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        values = self._compiled.construct_params(dict(params))
        for name, processor in self._processors.items():
            values[name] = processor(values[name])
        args: Any = (
            tuple(values[name] for name in self._order) if self._order is not None else values
        )
        connection = self._engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(self._sql, args)
                row = cursor.fetchone()
            finally:
                cursor.close()
        finally:
            connection.close()  # back to the pool, which rolls back whatever the driver began
        return tuple(row) if row is not None else None
