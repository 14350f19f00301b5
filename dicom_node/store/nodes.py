"""The nodes sharing one job store, and the heartbeat that keeps their claims.

A node claims a study (state ``processing``) or a delivery (state ``sending``) with its name
and a lease (``claimed_by``, ``lease_until``, Unix seconds). :class:`Heartbeat`, a daemon
thread per node started by its first claim, renews the leases of the claims the node works on
(:meth:`.db.Database.hold`, until :meth:`.db.Database.let_go`) and its row in ``nodes`` every
``lease_s / 3``; a claim a live node dropped after an error it could not record (the database
down at that moment) is no longer renewed, so it lapses and is taken over like a dead node's; a node that dies (SIGKILL, power, network) stops renewing,
and once its leases run out another node's claim takes the work over
(:meth:`.jobs.JobStore.claim_due_study`, :meth:`.deliveries.DeliveryQueue.due_deliveries`).
Only shared databases (PostgreSQL) use leases; the embedded SQLite store has one node, and its
restart re-queues what it held (:meth:`.jobs.JobStore.recover`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from typing import Any

from cxr_triage.dicom_node.store.schema import PROCESSING, SENDING

log = logging.getLogger(__name__)

_UPSERT_NODE = ("INSERT INTO nodes (node_name, host, pid, started_at, last_heartbeat) VALUES (?,?,?,?,?)"
                " ON CONFLICT (node_name) DO UPDATE SET host=excluded.host, pid=excluded.pid,"
                " last_heartbeat=excluded.last_heartbeat")
_NEW_START = "UPDATE nodes SET started_at=? WHERE node_name=? AND pid IS DISTINCT FROM ?"

NODES_SQL = (
    "SELECT n.node_name, n.host, n.pid, n.started_at, n.last_heartbeat,"
    " (SELECT COUNT(*) FROM studies s WHERE s.claimed_by=n.node_name AND s.state='processing')"
    "   AS studies_held,"
    " (SELECT COUNT(*) FROM deliveries d WHERE d.claimed_by=n.node_name AND d.state='sending')"
    "   AS deliveries_held"
    " FROM nodes n ORDER BY n.node_name")


def renew(db: Any, now: float | None = None) -> dict[str, int]:
    """One heartbeat of ``db``'s node (a :class:`~.db.Database`): its leases pushed to
    ``now + lease_s`` and its ``nodes`` row touched, each statement on its own (no locks held
    across tables). Returns the studies and deliveries it holds."""
    now = time.time() if now is None else now
    until = now + db.options.lease_s
    con = db.connection()
    con.execute(_UPSERT_NODE, (db.node_name, socket.gethostname(), os.getpid(), now, now))
    studies = _renew(con, "studies", "study_uid", db.held("studies"), (until, db.node_name, PROCESSING))
    sends = _renew(con, "deliveries", "id", db.held("deliveries"), (until, db.node_name, SENDING))
    return {"studies": studies, "deliveries": sends}


def _renew(con: Any, table: str, key: str, keys: list[Any], args: tuple[float, str, str]) -> int:
    """Push the leases of ``keys`` (rows of ``table`` still claimed by this node in the
    claimed state); the number renewed."""
    if not keys:
        return 0
    marks = ",".join("?" * len(keys))
    return int(con.execute(f"UPDATE {table} SET lease_until=? WHERE claimed_by=? AND state=?"
                           f" AND {key} IN ({marks})", (*args, *keys)).rowcount)


class Heartbeat(threading.Thread):
    """Renews a node's leases every ``lease_s / 3`` until :meth:`stop` or until its
    :class:`~.db.Database` is gone (held weakly); a failed beat (database down) is logged
    once per outage and tried again at the next beat."""

    def __init__(self, db: Any):
        super().__init__(name=f"heartbeat-{db.node_name}", daemon=True)
        self._db = weakref.ref(db)
        self._interval = max(0.2, db.options.lease_s / 3.0)
        self._halt = threading.Event()
        self._failing = False

    def beat(self) -> bool:
        """One renewal now; False when the database could not be reached (or is gone)."""
        db = self._db()
        if db is None:
            return False
        try:
            if not self._failing:
                db.connection().execute(_NEW_START, (time.time(), db.node_name, os.getpid()))
            renew(db)
        except Exception as exc:  # noqa: BLE001 - the database down: the leases may lapse
            if not self._failing:
                log.warning("heartbeat failed", extra={"node": db.node_name, "error": str(exc)[:200]})
            self._failing = True
            return False
        self._failing = False
        return True

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.wait(self._interval) and self._db() is not None:
            self.beat()
