"""Connections to the job store: the embedded SQLite database (WAL, ``synchronous=FULL``, one
connection per thread) or a PostgreSQL database several nodes share (a pool, :mod:`.pg`).

:class:`Database` opens the store (creating and migrating it, :mod:`.schema`) and hands out
connections and write transactions; the writers (:mod:`.jobs`, :mod:`.deliveries`,
:mod:`.feedback`) and the read side (:mod:`.queries`) all go through it and write their SQL
once, for both engines (``?`` parameters; :func:`.pg.to_pg` translates). What differs between
the engines at run time is here: row locks for claims (:meth:`Database.lock_rows`) and whether
claims are shared between nodes (:attr:`Database.shared`: leases, heartbeat, takeover).
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

from cxr_triage.dicom_node.store.nodes import Heartbeat
from cxr_triage.dicom_node.store.schema import migrate, migrate_pg

log = logging.getLogger(__name__)


class Cursor(Protocol):
    """What a statement returns on either engine (``sqlite3.Cursor`` or :class:`.pg.Rows`)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """``execute(sql, parameters)`` with ``?`` parameters; rows by index and column name."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...


@dataclass(frozen=True)
class StoreOptions:
    """Which database and who we are in it (``[store]`` in the configuration).

    ``backend``: "sqlite" (``queue.sqlite3`` in the state folder) or "postgresql" (``dsn``, a
    libpq connection string without a password); ``node_name``: this node in claims ("" the
    host name); ``lease_s``: seconds a claim outlives its node's last heartbeat;
    ``connect_timeout_s``: how long a statement waits for a connection."""

    backend: str = "sqlite"
    dsn: str = ""
    node_name: str = ""
    lease_s: float = 30.0
    connect_timeout_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: Any) -> "StoreOptions":
        """From ``cfg.store`` (:class:`cxr_triage.config.StoreSettings`)."""
        return cls(settings.backend, settings.dsn, settings.node_name, settings.lease_s,
                   settings.connect_timeout_s)

    @property
    def name(self) -> str:
        return self.node_name or socket.gethostname()


class Database:
    """Thread-safe access to the job store.

    ``path``: the SQLite file (its folder is created; unused with PostgreSQL);
    ``busy_timeout_s``: how long an SQLite statement waits for another writer's lock;
    ``options``: the backend (:class:`StoreOptions`, default the embedded SQLite).
    ``sqlite3.DatabaseError`` when the file is no database or comes from a newer node;
    :class:`.pg.StoreUnavailable` when PostgreSQL cannot be reached at start."""

    def __init__(self, path: Path, busy_timeout_s: float = 30.0, options: StoreOptions | None = None):
        self.path = Path(path)
        self.options = options or StoreOptions()
        self.node_name = self.options.name
        self._busy = busy_timeout_s
        self._local = threading.local()
        self._pg: Any = None
        self._heartbeat: Any = None
        self._heartbeat_lock = threading.Lock()
        # claims this node works on now, by table ("studies": Study UIDs, "deliveries": ids)
        self._held: dict[str, set[Any]] = {"studies": set(), "deliveries": set()}
        self._held_lock = threading.Lock()
        if self.shared:
            self._open_pg()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            migrate(self._sqlite())

    @property
    def shared(self) -> bool:
        """True when several nodes share this database (PostgreSQL): claims carry leases."""
        return self.options.backend == "postgresql"

    def _open_pg(self) -> None:
        # psycopg is needed only by nodes that use PostgreSQL: the embedded default never loads it
        from cxr_triage.dicom_node.store.pg import PgPool, mask_dsn

        self._pg = PgPool(self.options.dsn, self.options.connect_timeout_s)
        log.info("job store on postgresql", extra={"dsn": mask_dsn(self.options.dsn),
                                                   "node": self.node_name, "pid": os.getpid()})
        migrate_pg(self._pg.transaction)

    def _sqlite(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=self._busy, isolation_level=None,
                                  check_same_thread=True)
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")   # an acknowledged instance survives power loss
            con.execute(f"PRAGMA busy_timeout={int(self._busy * 1000)}")
            self._local.con = con
        return con

    def _con(self) -> Any:
        return self._pg.connection() if self._pg is not None else self._sqlite()

    def connection(self) -> Connection:
        """A connection for read queries (:mod:`.queries`): this thread's SQLite connection,
        or PostgreSQL statements each autocommitted; writes go through the writers' methods."""
        con: Connection = self._con()
        return con

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A write transaction, rolled back when the block raises: BEGIN IMMEDIATE on SQLite
        (no lock upgrades, no deadlocks), one pooled connection on PostgreSQL."""
        if self._pg is not None:
            with self._pg.transaction() as pcon:
                yield pcon
            return
        con = self._sqlite()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    _tx = transaction

    def lock_rows(self, table: str = "") -> str:
        """The clause that claims rows in a ``SELECT``: ``FOR UPDATE [OF t] SKIP LOCKED`` on
        PostgreSQL (other nodes skip what one claims), "" on SQLite (BEGIN IMMEDIATE already
        holds the one write lock)."""
        if not self.shared:
            return ""
        return f" FOR UPDATE OF {table} SKIP LOCKED" if table else " FOR UPDATE SKIP LOCKED"

    def lock_row(self) -> str:
        """``FOR UPDATE`` on PostgreSQL (wait for the row), "" on SQLite."""
        return " FOR UPDATE" if self.shared else ""

    def hold(self, table: str, *keys: Any) -> None:
        """Claims this node has just taken (``table`` "studies" or "deliveries"): the heartbeat
        renews their leases until :meth:`let_go`."""
        with self._held_lock:
            self._held[table].update(keys)

    def let_go(self, table: str, *keys: Any) -> None:
        """Claims this node no longer works on (finished, failed, or dropped after an error it
        could not record): the heartbeat stops renewing them, so one left behind by an error
        lapses after ``lease_s`` and any node takes it over. No keys: all of ``table``."""
        with self._held_lock:
            if keys:
                self._held[table].difference_update(keys)
            else:
                self._held[table].clear()

    def held(self, table: str) -> list[Any]:
        """The claims of ``table`` this node works on now (see :meth:`hold`)."""
        with self._held_lock:
            return sorted(self._held[table])

    def start_heartbeat(self) -> None:
        """Start renewing this node's leases (once; only on a shared database): called by the
        first claim, so a node that only reads (``status``) never appears as a node."""
        if not self.shared or self._heartbeat is not None:
            return
        with self._heartbeat_lock:
            if self._heartbeat is None:
                self._heartbeat = Heartbeat(self)
                self._heartbeat.beat()
                self._heartbeat.start()

    def close(self) -> None:
        """Close this thread's SQLite connection (the PostgreSQL pool is shared by the
        node's threads: :meth:`dispose` closes it)."""
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def dispose(self) -> None:
        """Stop the heartbeat and close every connection (the end of the process or test)."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._pg is not None:
            self._pg.close()
        self.close()
