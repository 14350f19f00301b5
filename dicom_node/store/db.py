"""Connections to the job store's SQLite database (WAL, ``synchronous=FULL``), one per thread.

:class:`Database` opens ``queue.sqlite3`` (creating and migrating it, :mod:`.schema`) and hands
out this thread's connection and write transactions; the writers (:mod:`.jobs`,
:mod:`.deliveries`, :mod:`.feedback`) and the read side (:mod:`.queries`) all go through it.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from cxr_triage.dicom_node.store.schema import migrate


class Database:
    """Thread-safe access to ``queue.sqlite3``: one connection per thread.

    ``path``: the database file (its folder is created); ``busy_timeout_s``: how long a
    statement waits for another writer's lock. ``sqlite3.DatabaseError`` when the file is no
    database or comes from a newer node."""

    def __init__(self, path: Path, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy = busy_timeout_s
        self._local = threading.local()
        migrate(self._con())

    def _con(self) -> sqlite3.Connection:
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

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, for read queries (:mod:`.queries`); writes go through
        the writers' methods."""
        return self._con()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken with BEGIN IMMEDIATE (no lock upgrades, no deadlocks),
        rolled back when the block raises."""
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    _tx = transaction

    def close(self) -> None:
        """Close this thread's connection."""
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None
