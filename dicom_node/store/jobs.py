"""The node's job store: an embedded SQLite database (WAL, synchronous=FULL) or one
PostgreSQL database shared by several nodes (:mod:`.db`, :mod:`.nodes`).

It is the single source of truth for what was received and what is owed to whom, so a
restart (or ``kill -9``) resumes every unfinished job: see :meth:`JobStore.recover`.

State machines::

    study:    receiving --(quiet period)--> processing --> triaged
                  ^   new instance (generation+1)  |         |
                  +--------------------------------+---------+      processing --(errors)--> failed

(the delivery state machine is in :mod:`.deliveries`).

One *result* per study (and per generation); a newer result supersedes the older one and
cancels its undelivered deliveries. A delivery is one result *object* (the SR, one summary
image) to one destination, so each object is sent, retried and refused on its own (rows of
schema version 3 and older name no object: they stand for every object of the result).
Deliveries of the same result always send the same files, so retries reuse the same SOP
Instance UIDs.

Each instance keeps the SHA-256 of its data set (``instances.sha256``): the same SOP Instance
UID sent again with the same content changes nothing, with other content it is a *changed
instance* — the new file replaces the old one in the study, the old file is kept and named in
``instance_conflicts``, and the study opens a new generation, so it is triaged again and the
new result supersedes the old one (docs/operations.md, "Changed instances").

Exception text stored here (``last_error``, attempt details) is redacted like log lines
(:func:`cxr_triage.logs.redact_values`): libraries quote header values in their messages.

This module is the write side of receiving and triage: instances, study claims, results
(:class:`JobStore`). Beside it: :mod:`.schema` (tables, migration, state names), :mod:`.db`
(connections, transactions), :mod:`.deliveries` (the delivery queue, which :class:`JobStore`
extends), :mod:`.identity` (accession number, patient ID and name), :mod:`.feedback` (the
radiologist's assessment, the one thing the worklist writes). The read side (counts, oldest
pending, list/get studies, failures: ``cxr-triage status``, the web worklist and metrics) is
:class:`~cxr_triage.dicom_node.store.queries.StudyQueries`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from cxr_triage.contract.study import AssessedResult
from cxr_triage.dicom_node.store.db import Connection

# Re-exported: the names callers import from here (receive, worker, delivery, service, tools).
from cxr_triage.dicom_node.store.deliveries import (
    HL7_PREFIX,
    OUTBOX,
    DeliveryQueue,
    DueDelivery,
    ResultObject,
    cancel_owed,
    queue_deliveries,
)
from cxr_triage.dicom_node.store.feedback import FEEDBACK_VERDICTS, FeedbackWriter
from cxr_triage.dicom_node.store.identity import (
    IDENTITY_FIELDS,
    IDENTITY_KEYWORDS,
    identity_from_headers,
    write_identity,
)
from cxr_triage.dicom_node.store.schema import (
    CANCELLED,
    DEAD,
    DELIVERED,
    FAILED,
    PENDING,
    PROCESSING,
    RECEIVING,
    REFUSED,
    SCHEMA_VERSION,
    SENDING,
    TRIAGED,
)
from cxr_triage.logs import redact_values

__all__ = [
    "CANCELLED", "DEAD", "DELIVERED", "FAILED", "FEEDBACK_VERDICTS", "HL7_PREFIX", "IDENTITY_FIELDS",
    "IDENTITY_KEYWORDS", "OUTBOX", "PENDING", "PROCESSING", "RECEIVING", "REFUSED", "SCHEMA_VERSION",
    "SENDING", "TRIAGED", "DueDelivery", "InstanceRecord", "JobStore", "ResultObject", "StoredInstance",
    "identity_from_headers",
]


@dataclass(frozen=True)
class InstanceRecord:
    sop_instance_uid: str
    study_uid: str
    series_uid: str | None
    sop_class_uid: str | None
    transfer_syntax: str | None
    path: str
    size: int | None
    calling_ae: str | None
    received_at: float
    sha256: str | None = None     # of the data set as received (spool.dataset_sha256)


@dataclass(frozen=True)
class StoredInstance:
    """What the store holds for one SOP Instance UID (to compare a re-sent instance with)."""

    sop_instance_uid: str
    study_uid: str
    path: str
    sha256: str | None


_UPSERT_INSTANCE = (
    "INSERT INTO instances (sop_instance_uid, study_uid, series_uid, sop_class_uid, transfer_syntax,"
    " path, size, calling_ae, received_at, sha256) VALUES (?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT (sop_instance_uid) DO UPDATE SET study_uid=excluded.study_uid,"
    " series_uid=excluded.series_uid, sop_class_uid=excluded.sop_class_uid,"
    " transfer_syntax=excluded.transfer_syntax, path=excluded.path, size=excluded.size,"
    " calling_ae=excluded.calling_ae, received_at=excluded.received_at, sha256=excluded.sha256")
#: how long deliveries of a result's later objects wait for them (then tried anyway: refused)
LATER_HOLD_S = 120.0
_UPSERT_RESULT_OBJECT = (
    "INSERT INTO result_objects VALUES (?,?,?,?,?) ON CONFLICT (sop_instance_uid) DO UPDATE SET"
    " result_id=excluded.result_id, series_uid=excluded.series_uid,"
    " sop_class_uid=excluded.sop_class_uid, path=excluded.path")


class JobStore(DeliveryQueue):
    """The node's job store: receiving and triage writes here, the delivery queue
    (:class:`~.deliveries.DeliveryQueue`) inherited; see :class:`~.db.Database` for the
    connections (``path``, ``busy_timeout_s``)."""

    # -- receiving ---------------------------------------------------------------------
    def add_instance(self, rec: InstanceRecord) -> bool:
        """Record a durably spooled instance; returns True when it (re)opens the study.

        A re-sent instance (same SOP Instance UID in the same study, same content) does not
        reopen a study that was already triaged: senders retry after crashes, and that must
        not produce a second result. The same UID with *other content* (both SHA-256 known
        and different) is a changed instance: it replaces the old row, the old file is named
        in ``instance_conflicts`` (kept for inspection) and the study is reopened in a new
        generation, whatever its state. An instance that moves to another study is named in
        ``instance_conflicts`` as well (its old file stays where it was).
        """
        with self._tx() as con:
            # the study row first, then locked: two nodes receiving one study take turns here
            opened = con.execute(
                "INSERT INTO studies (study_uid, state, first_received_at, last_received_at,"
                " calling_ae, n_instances) VALUES (?,?,?,?,?,0) ON CONFLICT (study_uid) DO NOTHING",
                (rec.study_uid, RECEIVING, rec.received_at, rec.received_at, rec.calling_ae)).rowcount == 1
            study = con.execute("SELECT state FROM studies WHERE study_uid=?" + self.lock_row(),
                                (rec.study_uid,)).fetchone()
            old = con.execute("SELECT study_uid, path, sha256 FROM instances WHERE sop_instance_uid=?",
                              (rec.sop_instance_uid,)).fetchone()
            changed = (old is not None and rec.sha256 is not None and old["sha256"] is not None
                       and old["sha256"] != rec.sha256)
            moved = old is not None and old["study_uid"] != rec.study_uid
            if (changed or moved) and old["path"] != rec.path:
                con.execute(
                    "INSERT INTO instance_conflicts (sop_instance_uid, study_uid, old_path, old_sha256,"
                    " new_path, new_sha256, calling_ae, detected_at) VALUES (?,?,?,?,?,?,?,?)",
                    (rec.sop_instance_uid, rec.study_uid, old["path"], old["sha256"], rec.path,
                     rec.sha256, rec.calling_ae, rec.received_at))
            con.execute(_UPSERT_INSTANCE, (rec.sop_instance_uid, rec.study_uid, rec.series_uid,
                                           rec.sop_class_uid, rec.transfer_syntax, rec.path, rec.size,
                                           rec.calling_ae, rec.received_at, rec.sha256))
            duplicate = old is not None and not moved and not changed
            if moved:
                self._count_instances(con, old["study_uid"])
            if opened:
                self._count_instances(con, rec.study_uid)
                return True
            if duplicate and study["state"] in (TRIAGED, FAILED):
                return False
            # New (or re-sent before triage) instance: push the quiet period out; a study in
            # processing stays there and is re-triaged because its generation moved on.
            con.execute(
                "UPDATE studies SET generation=generation+1, last_received_at=?, errors=0,"
                " retry_at=0, state=CASE WHEN state=? THEN ? ELSE ? END WHERE study_uid=?",
                (rec.received_at, PROCESSING, PROCESSING, RECEIVING, rec.study_uid),
            )
            self._count_instances(con, rec.study_uid)
            return True

    @staticmethod
    def _count_instances(con: Connection, study_uid: str) -> None:
        con.execute("UPDATE studies SET n_instances=(SELECT COUNT(*) FROM instances WHERE"
                    " study_uid=?) WHERE study_uid=?", (study_uid, study_uid))

    def known_instance_paths(self) -> set[str]:
        """Every spool file the store knows: current instances and the superseded files of
        changed instances (kept for inspection, never imported again as orphans)."""
        con = self._con()
        return ({r[0] for r in con.execute("SELECT path FROM instances")}
                | {r[0] for r in con.execute("SELECT old_path FROM instance_conflicts")})

    def stored_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        row = self._con().execute(
            "SELECT sop_instance_uid, study_uid, path, sha256 FROM instances WHERE sop_instance_uid=?",
            (sop_instance_uid,)).fetchone()
        return None if row is None else StoredInstance(**dict(row))

    def set_instance_sha256(self, sop_instance_uid: str, path: str, sha256: str) -> None:
        """Fill in the digest of an instance recorded before digests were kept (schema 1)."""
        with self._tx() as con:
            con.execute("UPDATE instances SET sha256=? WHERE sop_instance_uid=? AND path=?"
                        " AND sha256 IS NULL", (sha256, sop_instance_uid, path))

    def instance_conflicts(self, sop_instance_uid: str | None = None) -> list[dict[str, Any]]:
        """Changed instances seen (oldest first), for one SOP Instance UID or all."""
        sql = "SELECT * FROM instance_conflicts"
        args: tuple[str, ...] = ()
        if sop_instance_uid is not None:
            sql, args = sql + " WHERE sop_instance_uid=?", (sop_instance_uid,)
        return [dict(r) for r in self._con().execute(sql + " ORDER BY id", args)]

    def set_identity(self, study_uid: str, identity: dict[str, str]) -> None:
        """The study's accession number, patient ID and name, as people know the study."""
        with self._tx() as con:
            write_identity(con, study_uid, identity)

    def add_feedback(self, study_uid: str, result_id: int, verdict: str, user: str, *,
                     finding: str | None = None, now: float | None = None, **assessed: Any) -> int:
        """A radiologist's assessment (:meth:`.feedback.FeedbackWriter.add`); ``assessed``:
        the fields of :class:`~cxr_triage.contract.study.AssessedResult` (decision, score, model, threshold)."""
        return FeedbackWriter(self).add(study_uid, result_id, verdict, user, finding=finding,
                                        assessed=AssessedResult(**assessed), now=now)

    def add_result_object(self, result_id: int, obj: ResultObject) -> None:
        """One more object of a result, made after it was stored (a fallback SR the
        deliverer wrote): the own-output check and the study page then know it."""
        with self._tx() as con:
            con.execute("INSERT INTO result_objects VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
                        (obj.sop_instance_uid, result_id, obj.series_uid, obj.sop_class_uid, obj.path))

    def add_later_objects(self, result_id: int, objects: list[ResultObject], reserved: tuple[str, ...],
                          now: float | None = None) -> None:
        """Objects made after their result's commit (``complete_study(later=reserved)``): recorded,
        their held deliveries due now; a reserved UID without an object (its image could not be
        made) loses its deliveries. A superseded result's deliveries stay cancelled."""
        now = time.time() if now is None else now
        made = {o.sop_instance_uid for o in objects}
        with self._tx() as con:
            for o in objects:
                con.execute(_UPSERT_RESULT_OBJECT, (o.sop_instance_uid, result_id, o.series_uid,
                                                    o.sop_class_uid, o.path))
            for uid in reserved:
                if uid in made:
                    con.execute("UPDATE deliveries SET next_attempt_at=? WHERE result_id=? AND"
                                " sop_instance_uid=? AND state=?", (now, result_id, uid, PENDING))
                else:
                    con.execute("DELETE FROM deliveries WHERE result_id=? AND sop_instance_uid=?"
                                " AND state=?", (result_id, uid, PENDING))

    def is_own_output(self, sop_instance_uid: str, series_uid: str | None) -> bool:
        """True for an object this node produced (a PACS sending our results back)."""
        row = self._con().execute(
            "SELECT 1 FROM result_objects WHERE sop_instance_uid=? OR series_uid=? LIMIT 1",
            (sop_instance_uid, series_uid or ""),
        ).fetchone()
        return row is not None

    # -- triage ------------------------------------------------------------------------
    def claim_due_study(self, quiet_period_s: float, now: float | None = None) -> tuple[str, int] | None:
        """Claim the oldest study that has been quiet long enough, or (shared database) whose
        claim's lease ran out: (study_uid, generation), now ``processing`` under this node's
        name and lease. On PostgreSQL the row is taken with ``FOR UPDATE SKIP LOCKED``, so
        nodes claiming together never get the same study."""
        now = time.time() if now is None else now
        sql = ("SELECT study_uid, generation FROM studies WHERE (state=? AND last_received_at<=?"
               " AND retry_at<=?)" + (" OR (state=? AND lease_until<?)" if self.shared else "")
               + " ORDER BY last_received_at LIMIT 1")
        args = (RECEIVING, now - quiet_period_s, now) + ((PROCESSING, now) if self.shared else ())
        if self._con().execute(sql, args).fetchone() is None:   # cheap poll without the write lock
            return None
        self.start_heartbeat()
        with self._tx() as con:
            row = con.execute(sql + self.lock_rows(), args).fetchone()
            if row is None:
                return None
            con.execute("UPDATE studies SET state=?, claimed_by=?, lease_until=? WHERE study_uid=?",
                        (PROCESSING, self.node_name, now + self.options.lease_s, row["study_uid"]))
        self.hold("studies", row["study_uid"])
        return row["study_uid"], row["generation"]

    def study_instances(self, study_uid: str) -> list[InstanceRecord]:
        rows = self._con().execute(
            "SELECT * FROM instances WHERE study_uid=? ORDER BY series_uid, received_at",
            (study_uid,)).fetchall()
        return [InstanceRecord(**dict(r)) for r in rows]

    def complete_study(
        self,
        study_uid: str,
        generation: int,
        decision: str,
        score: float | None,
        result: dict[str, Any],
        objects: list[ResultObject],
        destinations: list[str],
        now: float | None = None,
        *,
        nodule_score: float | None = None,
        nodule_flag: bool | None = None,
        amends_result_id: int | None = None,
        identity: dict[str, str] | None = None,
        later: tuple[str, ...] = (),
    ) -> int:
        """Store a result and its deliveries atomically; returns the result id.

        ``nodule_score`` / ``nodule_flag``: the study's nodule/mass result (None: the model
        has no nodule/mass output), kept on the study row for the worklist.
        ``amends_result_id``: the earlier result this one replaces (its SR names that
        result's SR as predecessor). ``identity``: the study's accession number, patient ID
        and name (:data:`IDENTITY_FIELDS`) for the worklist. ``later``: SOP Instance UIDs of
        objects still to be made (the summary images): their deliveries are queued now, held
        for :data:`LATER_HOLD_S` until :meth:`add_later_objects` makes them due, so the study
        never looks delivered without them. Were the node to stop in between, they become due
        without an object, and the deliverer reports them refused.

        If new instances arrived while triaging (generation moved on), the result is kept
        for the record but superseded at once and not delivered: the study is triaged again.
        """
        now = time.time() if now is None else now
        self.let_go("studies", study_uid)  # finished here; if this write fails the claim lapses
        with self._tx() as con:
            cur = con.execute("SELECT generation, state, claimed_by FROM studies WHERE study_uid=?"
                              + self.lock_row(), (study_uid,)).fetchone()
            # another node took the study over (this node's lease ran out): its result counts
            held = cur is not None and (not self.shared or (
                cur["state"] == PROCESSING and cur["claimed_by"] == self.node_name))
            current = held and cur["generation"] == generation
            old = [r[0] for r in con.execute(
                "SELECT id FROM results WHERE study_uid=? AND superseded=0", (study_uid,))] if current else []
            for oid in old:             # supersede older results and cancel what they still owed
                con.execute("UPDATE results SET superseded=1 WHERE id=?", (oid,))
                cancel_owed(con, oid)
            rid = int(con.execute(
                "INSERT INTO results (study_uid, generation, decision, score, result_json, created_at,"
                " superseded, amends) VALUES (?,?,?,?,?,?,?,?) RETURNING id",
                (study_uid, generation, decision, score, json.dumps(result), now, 0 if current else 1,
                 amends_result_id),
            ).fetchall()[0][0])
            for o in objects:
                con.execute(_UPSERT_RESULT_OBJECT, (o.sop_instance_uid, rid, o.series_uid,
                                                    o.sop_class_uid, o.path))
            if not current:
                if held:
                    con.execute("UPDATE studies SET state=? WHERE study_uid=?", (RECEIVING, study_uid))
                return rid
            queue_deliveries(con, rid, destinations, objects, now)
            for dest, uid in ((d, u) for d in destinations if not d.startswith(HL7_PREFIX) for u in later):
                con.execute("INSERT INTO deliveries (result_id, destination, state, next_attempt_at,"
                            " created_at, sop_instance_uid) VALUES (?,?,?,?,?,?)",
                            (rid, dest, PENDING, now + LATER_HOLD_S, now, uid))
            con.execute(
                "UPDATE studies SET state=?, decision=?, score=?, nodule_score=?, nodule_flag=?,"
                " result_id=?, triaged_at=?, errors=0, last_error=NULL WHERE study_uid=?",
                (TRIAGED, decision, score, nodule_score,
                 None if nodule_flag is None else int(bool(nodule_flag)), rid, now, study_uid))
            if identity:
                write_identity(con, study_uid, identity)
            return rid

    def fail_study(self, study_uid: str, generation: int, error: str, max_errors: int = 3,
                   retry_after_s: float = 5.0, transient: bool = False,
                   now: float | None = None) -> str:
        """An error while triaging: retry later, or give up (state ``failed``) after
        ``max_errors``. A ``transient`` error (disk full, database busy) never gives up: the
        study waits, backing off up to a minute, until storage works again."""
        now = time.time() if now is None else now
        self.let_go("studies", study_uid)  # if this write fails too, the claim lapses (nodes.py)
        with self._tx() as con:
            row = con.execute("SELECT errors, generation FROM studies WHERE study_uid=?",
                              (study_uid,)).fetchone()
            errors = (row["errors"] if row else 0) + 1
            give_up = not transient and errors >= max_errors and row["generation"] == generation
            state = FAILED if give_up else RECEIVING
            delay = min(60.0, retry_after_s * errors)
            con.execute("UPDATE studies SET state=?, errors=?, last_error=?, retry_at=? WHERE study_uid=?",
                        (state, errors, redact_values(error)[:500], now + delay, study_uid))
            return state

    # -- restart -----------------------------------------------------------------------
    def recover(self, studies: bool = True, deliveries: bool = True) -> dict[str, int]:
        """After a crash or restart (or an error in the one thread that owns that state):
        interrupted triage and sends go back in the queue. On a shared database only this
        node's claims (and claims whose lease ran out): other nodes' work goes on."""
        mine, args = ((" AND (claimed_by=? OR claimed_by IS NULL OR lease_until<?)",
                       (self.node_name, time.time())) if self.shared else ("", ()))
        for table, wanted in (("studies", studies), ("deliveries", deliveries)):
            if wanted:
                self.let_go(table)
        with self._tx() as con:
            n_studies = con.execute("UPDATE studies SET state=?, claimed_by=NULL WHERE state=?" + mine,
                                    (RECEIVING, PROCESSING, *args)).rowcount if studies else 0
            n_sends = con.execute("UPDATE deliveries SET state=?, claimed_by=NULL WHERE state=?" + mine,
                                  (PENDING, SENDING, *args)).rowcount if deliveries else 0
        return {"studies_resumed": n_studies, "deliveries_resumed": n_sends}
