"""The job store on PostgreSQL: a connection pool that speaks the store's SQL.

The store's statements are written once, in the ``?`` parameter style of Python's ``sqlite3``
(PEP 249 "qmark") and in SQL both engines accept (``ON CONFLICT``, ``RETURNING``, partial
indexes). :func:`to_pg` is the one place that turns them into psycopg's ``%s`` style; the DDL
differences are in :mod:`.schema`. Rows answer by position and by column name, like
``sqlite3.Row``, so the writers and the read side do not know which engine they talk to.

Errors keep the store's contract, the ``sqlite3`` exception classes the callers already catch
(PEP 249 names them the same): a lost or refused connection, a pool timeout or a server
shutting down is :class:`StoreUnavailable` (an ``sqlite3.OperationalError``, transient: the
C-STORE answers 0xA700, the worker and deliverer back off and resume), a constraint violation
``sqlite3.IntegrityError``, any other database error ``sqlite3.DatabaseError``.

Driver: psycopg 3 with psycopg_pool (https://www.psycopg.org/psycopg3/docs/); statements are
bound on the client (``ClientCursor``) so an untyped ``? IS NULL`` means what it means in
SQLite. The password never appears in the DSN we log (:func:`mask_dsn`): libpq reads it from
``PGPASSWORD`` or a password file.
"""

from __future__ import annotations

import functools
import sqlite3
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict, make_conninfo


class StoreUnavailable(sqlite3.OperationalError):
    """The database cannot be reached now (down, restarting, no free connection): transient."""


class Row(tuple):  # type: ignore[type-arg]
    """One result row: ``row[0]`` and ``row["column"]``, ``keys()``, ``dict(row)``."""

    _names: dict[str, int]

    def __new__(cls, names: dict[str, int], values: Sequence[Any]) -> "Row":
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        return tuple.__getitem__(self, self._names[key] if isinstance(key, str) else key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: Any) -> Any:
    names = {c.name: i for i, c in enumerate(cursor.description or ())}
    return lambda values: Row(names, values)


@functools.lru_cache(maxsize=512)
def to_pg(sql: str) -> str:
    """A statement in the store's ``?`` style as psycopg's ``%s`` style (``%`` escaped)."""
    return sql.replace("%", "%%").replace("?", "%s")


def mask_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***`` (for logs and ``status``)."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable dsn>"
    if "password" in parts:
        parts["password"] = "***"
    return make_conninfo("", **{k: v for k, v in parts.items() if v is not None})


@contextmanager
def translated_errors() -> Iterator[None]:
    """psycopg and pool errors as the store's ``sqlite3`` exception classes (module doc)."""
    try:
        yield
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as exc:
        raise StoreUnavailable(f"database unavailable: {exc}") from exc
    except psycopg.IntegrityError as exc:
        raise sqlite3.IntegrityError(str(exc)) from exc
    except psycopg.Error as exc:
        raise sqlite3.DatabaseError(str(exc)) from exc


class Rows:
    """A finished statement's rows (the connection already went back to the pool)."""

    def __init__(self, rows: list[Row], rowcount: int):
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Row | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Row]:
        return list(self._rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self._rows)


class PgConnection:
    """One pooled connection inside a transaction, or (``con=None``) each statement on a
    connection of its own that is committed and returned at once."""

    def __init__(self, pool: psycopg_pool.ConnectionPool, con: psycopg.Connection[Any] | None = None):
        self._pool = pool
        self._con = con

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Rows:
        """Run one statement (``?`` parameters); its rows, fetched."""
        with translated_errors():
            if self._con is not None:
                return self._run(self._con, sql, args)
            with self._pool.connection() as con:
                return self._run(con, sql, args)

    @staticmethod
    def _run(con: psycopg.Connection[Any], sql: str, args: Sequence[Any]) -> Rows:
        cur = psycopg.ClientCursor(con, row_factory=_row_factory)
        cur.execute(to_pg(sql), tuple(args))
        rows = cur.fetchall() if cur.description is not None else []
        return Rows(rows, cur.rowcount)


class PgPool:
    """The pool of one node's connections to the shared database (``min_size`` kept open,
    each checked before use, so a restarted server is reconnected to transparently). The
    pool's reconnection backs off exponentially; it gives up after ``reconnect_s`` and the next
    statement starts again from a one-second delay, so a node resumes within seconds of the
    server's return however long it was away."""

    def __init__(self, dsn: str, connect_timeout_s: float = 5.0, max_size: int = 8,
                 reconnect_s: float = 8.0):
        self.dsn = dsn
        self._pool = psycopg_pool.ConnectionPool(
            dsn, min_size=1, max_size=max_size, timeout=connect_timeout_s, open=False,
            reconnect_timeout=reconnect_s,
            check=psycopg_pool.ConnectionPool.check_connection,
            kwargs={"connect_timeout": max(1, int(connect_timeout_s)), "application_name": "cxr-triage"})
        self._pool.open(wait=False)

    def connection(self) -> PgConnection:
        """Statements each on its own connection, autocommitted."""
        return PgConnection(self._pool)

    @contextmanager
    def transaction(self) -> Iterator[PgConnection]:
        """One connection for the block: committed at its end, rolled back if it raises."""
        with translated_errors(), self._pool.connection() as con:
            yield PgConnection(self._pool, con)

    def close(self) -> None:
        self._pool.close()
