"""The delivery queue of the job store: one row per result object and destination.

State machine (a delivery is one result *object*, the SR or one summary image, to one
destination, so each object is sent, retried and refused on its own; rows of schema version 3
and older name no object: they stand for every object of the result)::

    pending --> sending --> delivered
       ^           |  transient failure: back-off, attempts+1
       +-----------+--> dead (older than dead_letter_after_s)      pending --> cancelled
                   |                                        (result superseded)
                   +--> refused (a permanent refusal, e.g. 0xA9xx, 0xC000: retried
                        only every refused_retry_s, reported; dead when too old)

Deliveries of the same result always send the same files, so retries reuse the same SOP
Instance UIDs. Error text is redacted like log lines (:func:`cxr_triage.logs.redact_values`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

from cxr_triage.dicom_node.store.db import Connection, Database
from cxr_triage.dicom_node.store.schema import CANCELLED, DEAD, DELIVERED, PENDING, REFUSED, SENDING
from cxr_triage.logs import redact_values

OUTBOX = "outbox"  # the destination name of the local outbox folder
HL7_PREFIX = "hl7:"  # "hl7:APP@host:port": an HL7 v2 ORU^R01 to a RIS (one per result, no object)


@dataclass(frozen=True)
class ResultObject:
    """One DICOM file a result consists of (the SR, optionally a summary image)."""

    sop_instance_uid: str
    series_uid: str
    sop_class_uid: str
    path: str


@dataclass(frozen=True)
class DueDelivery:
    id: int
    result_id: int
    study_uid: str
    destination: str
    attempts: int
    created_at: float
    objects: tuple[ResultObject, ...]


def queue_deliveries(con: Connection, result_id: int, destinations: Iterable[str],
                     objects: Iterable[ResultObject], now: float) -> None:
    """Inside the caller's transaction: one pending delivery per object and DICOM destination
    (or the outbox), one per result for each RIS (``hl7:...``)."""
    objects = list(objects)
    for dest in destinations:
        if dest.startswith(HL7_PREFIX):     # one message per result
            con.execute("INSERT INTO deliveries (result_id, destination, state, next_attempt_at,"
                        " created_at) VALUES (?,?,?,?,?)", (result_id, dest, PENDING, now, now))
            continue
        for o in objects:
            con.execute("INSERT INTO deliveries (result_id, destination, state, next_attempt_at,"
                        " created_at, sop_instance_uid) VALUES (?,?,?,?,?,?)",
                        (result_id, dest, PENDING, now, now, o.sop_instance_uid))


def cancel_owed(con: Connection, result_id: int) -> None:
    """Inside the caller's transaction: a superseded result's undelivered deliveries."""
    con.execute("UPDATE deliveries SET state=? WHERE result_id=? AND state IN (?,?,?)",
                (CANCELLED, result_id, PENDING, SENDING, REFUSED))


class DeliveryQueue(Database):
    """The deliverer's side of the job store (:mod:`cxr_triage.dicom_node.delivery.deliverer`)."""

    def due_deliveries(self, now: float | None = None, limit: int = 100) -> list[DueDelivery]:
        """Pending (and refused) deliveries whose back-off has expired, and (shared database)
        sends whose node's lease ran out, oldest first, claimed: ``sending`` under this node's
        name and lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL: no two nodes send one
        delivery at once). Each carries its one object (every object of the result for a
        delivery made before schema version 4)."""
        now = time.time() if now is None else now
        due = "(d.state IN (?,?) AND d.next_attempt_at<=?)" + (
            " OR (d.state=? AND d.lease_until<?)" if self.shared else "")
        args = (PENDING, REFUSED, now) + ((SENDING, now) if self.shared else ())
        if self._con().execute("SELECT 1 FROM deliveries d WHERE " + due + " LIMIT 1",
                               args).fetchone() is None:
            return []
        self.start_heartbeat()
        with self._tx() as con:
            rows = con.execute(
                "SELECT d.id, d.result_id, r.study_uid, d.destination, d.attempts, d.created_at,"
                " d.sop_instance_uid FROM deliveries d JOIN results r ON r.id=d.result_id"
                " WHERE " + due + " ORDER BY d.next_attempt_at, d.id LIMIT ?" + self.lock_rows("d"),
                (*args, limit)).fetchall()
            out = []
            for r in rows:
                objs = con.execute(
                    "SELECT sop_instance_uid, series_uid, sop_class_uid, path FROM result_objects"
                    " WHERE result_id=? AND (? IS NULL OR sop_instance_uid=?)"
                    " ORDER BY sop_class_uid DESC", (r["result_id"], r["sop_instance_uid"],
                                                     r["sop_instance_uid"])).fetchall()
                con.execute("UPDATE deliveries SET state=?, claimed_by=?, lease_until=? WHERE id=?",
                            (SENDING, self.node_name, now + self.options.lease_s, r["id"]))
                out.append(DueDelivery(r["id"], r["result_id"], r["study_uid"], r["destination"],
                                       r["attempts"], r["created_at"],
                                       tuple(ResultObject(**dict(o)) for o in objs)))
        self.hold("deliveries", *(d.id for d in out))
        return out

    def delivery_succeeded(self, delivery_id: int, detail: str = "", now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.let_go("deliveries", delivery_id)  # if this write fails the claim lapses (nodes.py)
        with self._tx() as con:
            con.execute("UPDATE deliveries SET state=?, attempts=attempts+1, delivered_at=?,"
                        " last_error=NULL WHERE id=?", (DELIVERED, now, delivery_id))
            con.execute("INSERT INTO attempts (delivery_id, at, ok, detail) VALUES (?,?,1,?)",
                        (delivery_id, now, redact_values(detail)))

    def delivery_failed(self, delivery_id: int, error: str, retry_initial_s: float,
                        retry_max_s: float, dead_letter_after_s: float,
                        now: float | None = None, *, permanent: bool = False,
                        refused_retry_s: float = 3600.0) -> str:
        """A transient failure backs off exponentially (initial * 2^(n-1), capped); a
        ``permanent`` refusal (the destination said this object will never be stored: 0xA9xx,
        0xCxxx, SOP class not supported, ...) becomes ``refused``, tried again only every
        ``refused_retry_s`` (a destination's configuration may change); ``dead`` once too old."""
        now = time.time() if now is None else now
        error = redact_values(error)
        self.let_go("deliveries", delivery_id)
        with self._tx() as con:
            row = con.execute("SELECT attempts, created_at, state FROM deliveries WHERE id=?",
                              (delivery_id,)).fetchone()
            attempts = row["attempts"] + 1
            delay = (refused_retry_s if permanent
                     else min(retry_max_s, retry_initial_s * 2 ** (attempts - 1)))
            if row["state"] == CANCELLED:
                state = CANCELLED
            elif now - row["created_at"] >= dead_letter_after_s:
                state = DEAD
            else:
                state = REFUSED if permanent else PENDING
            con.execute("UPDATE deliveries SET state=?, attempts=?, next_attempt_at=?, last_error=?"
                        " WHERE id=?", (state, attempts, now + delay, error[:500], delivery_id))
            con.execute("INSERT INTO attempts (delivery_id, at, ok, detail) VALUES (?,?,0,?)",
                        (delivery_id, now, error[:500]))
            return state

    def next_delivery_time(self) -> float | None:
        row = self._con().execute("SELECT MIN(next_attempt_at) FROM deliveries WHERE state IN (?,?)",
                                  (PENDING, REFUSED)).fetchone()
        return None if row[0] is None else float(row[0])

    def retry_dead(self, now: float | None = None) -> int:
        """Operator action: put dead and refused deliveries back in the queue (fresh age),
        e.g. once the destination accepts what it refused."""
        now = time.time() if now is None else now
        with self._tx() as con:
            return int(con.execute("UPDATE deliveries SET state=?, next_attempt_at=?, created_at=?"
                                   " WHERE state IN (?,?)", (PENDING, now, now, DEAD, REFUSED)).rowcount)
