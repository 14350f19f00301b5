"""The read side of the job store: what ``cxr-triage status``, the web worklist, metrics and
drift reports ask of ``queue.sqlite3``. Writes (and the state machines) are in :mod:`.jobs`
and :mod:`.deliveries`.

Studies come as plain rows (``list_studies``, ``get_study``: the JSON of ``cxr-triage
status``) or as the typed read model (``studies``, ``study``: :class:`StudyRecord`, built from
the same rows by :mod:`.read_model`), which the worklist reads."""

from __future__ import annotations

import json
import time
from typing import Any

from cxr_triage.contract.sop_classes import COMPREHENSIVE_3D_SR
from cxr_triage.contract.study import FeedbackRecord, StudyRecord
from cxr_triage.dicom_node.store import read_model
from cxr_triage.dicom_node.store.db import Database, StoreOptions
from cxr_triage.dicom_node.store.deliveries import ResultObject
from cxr_triage.dicom_node.store.feedback import FeedbackWriter
from cxr_triage.dicom_node.store.nodes import NODES_SQL
from cxr_triage.dicom_node.store.schema import DEAD, PENDING, PROCESSING, RECEIVING, REFUSED, SENDING


class StudyQueries:
    """Read-only queries over the job store's :class:`~.db.Database` (its per-thread
    connection), and the one writer the worklist may use (:meth:`feedback_writer`)."""

    def __init__(self, store: Database):
        self._store = store

    def counts(self) -> dict[str, Any]:
        """Studies by state and by decision, deliveries by state, instances received."""
        con = self._store.connection()
        studies = {r[0]: r[1] for r in con.execute("SELECT state, COUNT(*) FROM studies GROUP BY state")}
        decisions = {r[0]: r[1] for r in con.execute(
            "SELECT decision, COUNT(*) FROM studies WHERE decision IS NOT NULL GROUP BY decision")}
        deliveries = {r[0]: r[1] for r in con.execute(
            "SELECT state, COUNT(*) FROM deliveries GROUP BY state")}
        instances = con.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
        results = con.execute("SELECT COUNT(*) FROM results WHERE superseded=0").fetchone()[0]
        return {"instances": instances, "studies": studies, "decisions": decisions,
                "results": results, "deliveries": deliveries}

    def oldest_pending(self, now: float | None = None) -> dict[str, Any] | None:
        """The oldest piece of unfinished work: a study not yet triaged or a result not
        yet delivered; with its age in seconds."""
        now = time.time() if now is None else now
        con = self._store.connection()
        s = con.execute("SELECT study_uid, state, first_received_at FROM studies WHERE state IN (?,?)"
                        " ORDER BY first_received_at LIMIT 1", (RECEIVING, PROCESSING)).fetchone()
        d = con.execute(
            "SELECT d.id, r.study_uid, d.destination, d.state, d.created_at, d.attempts, d.last_error"
            " FROM deliveries d JOIN results r ON r.id=d.result_id WHERE d.state IN (?,?)"
            " ORDER BY d.created_at LIMIT 1", (PENDING, SENDING)).fetchone()
        items = []
        if s:
            items.append({"kind": "study", "study_uid": s["study_uid"], "state": s["state"],
                          "since": s["first_received_at"]})
        if d:
            items.append({"kind": "delivery", "delivery_id": d["id"], "study_uid": d["study_uid"],
                          "destination": d["destination"], "state": d["state"], "since": d["created_at"],
                          "attempts": d["attempts"], "last_error": d["last_error"]})
        if not items:
            return None
        oldest = min(items, key=lambda i: i["since"])
        oldest["age_s"] = max(0.0, now - oldest["since"])
        return oldest

    def nodes(self) -> list[dict[str, Any]]:
        """The nodes that claimed work in this store (:mod:`.nodes`): name, host, pid,
        ``started_at`` and ``last_heartbeat`` (Unix s), and the studies and deliveries each
        holds now (``studies_held``, ``deliveries_held``). Empty for the embedded store."""
        return [dict(r) for r in self._store.connection().execute(NODES_SQL)]

    def failed_attempts(self) -> int:
        """Delivery attempts that failed, ever (the metrics counter)."""
        return int(self._store.connection().execute("SELECT COUNT(*) FROM attempts WHERE ok=0").fetchone()[0])

    def study_latencies(self) -> list[float]:
        """Seconds from a study's first instance to its current result, per triaged study."""
        rows = self._store.connection().execute(
            "SELECT r.created_at - s.first_received_at FROM studies s JOIN results r ON r.id=s.result_id")
        return [float(r[0]) for r in rows if r[0] is not None]

    def latest_result_json(self) -> str | None:
        """The JSON of the newest result (the worklist names the model behind it)."""
        row = self._store.connection().execute("SELECT result_json FROM results ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else row[0]

    def delivery_failures(self, limit: int = 20) -> list[dict[str, Any]]:
        """Deliveries that failed at least once and are not delivered (dead ones first, then
        refused ones); each names its object (``sop_instance_uid``, ``sop_class_uid``)."""
        rows = self._store.connection().execute(
            "SELECT d.id, r.study_uid, d.destination, d.state, d.attempts, d.created_at,"
            " d.next_attempt_at, d.last_error, d.sop_instance_uid, o.sop_class_uid"
            " FROM deliveries d JOIN results r ON r.id=d.result_id"
            " LEFT JOIN result_objects o ON o.sop_instance_uid=d.sop_instance_uid"
            " WHERE d.state IN (?,?,?,?) AND d.attempts>0 ORDER BY d.state=? DESC, d.state=? DESC,"
            " d.created_at LIMIT ?",
            (PENDING, SENDING, DEAD, REFUSED, DEAD, REFUSED, limit)).fetchall()
        return [dict(r) for r in rows]

    def list_studies(self, decision: str | None = None, state: str | None = None,
                     since: float | None = None, until: float | None = None,
                     limit: int = 200, offset: int = 0) -> list[dict[str, Any]]:
        """Studies, newest first: decision, score, nodule/mass score and flag (null when the
        model has no nodule/mass output), the not-assessable reasons (codes, film order; empty
        for an assessed study), times, instance count, delivery status.

        ``delivery_status`` is ``delivered`` (every object to every destination),
        ``pending``, ``failing`` (retrying after an error), ``refused`` (a destination
        refused an object for good), ``dead``, ``none`` (nothing to deliver, e.g. shadow
        mode) or null before triage.
        """
        clause, args = _where(("s.decision=?", decision or None), ("s.state=?", state or None),
                              ("s.first_received_at>=?", since), ("s.first_received_at<?", until))
        return self._summaries(clause + " ORDER BY s.first_received_at DESC LIMIT ? OFFSET ?",
                               [*args, limit, offset])

    def get_study(self, study_uid: str) -> dict[str, Any] | None:
        """Everything about one study: summary, instances, current result (with per-image
        detail), its objects, deliveries and their attempts."""
        con = self._store.connection()
        row = con.execute("SELECT study_uid FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
        if row is None:
            return None
        summary = self._summaries("WHERE s.study_uid=?", [study_uid])[0]
        summary["instances"] = [dict(r) for r in con.execute(
            "SELECT * FROM instances WHERE study_uid=? ORDER BY received_at", (study_uid,))]
        summary["result"] = None
        summary["feedback"] = []
        summary["objects"] = []
        summary["deliveries"] = []
        if summary["result_id"] is not None:
            res = con.execute("SELECT * FROM results WHERE id=?", (summary["result_id"],)).fetchone()
            summary["result"] = json.loads(res["result_json"])
            summary["feedback"] = self.feedback(study_uid)
            summary["objects"] = [dict(r) for r in con.execute(
                "SELECT * FROM result_objects WHERE result_id=?", (summary["result_id"],))]
            for d in con.execute(
                    "SELECT d.*, o.sop_class_uid FROM deliveries d LEFT JOIN result_objects o"
                    " ON o.sop_instance_uid=d.sop_instance_uid WHERE d.result_id=? ORDER BY d.id",
                    (summary["result_id"],)):
                dd = dict(d)
                dd["attempt_log"] = [dict(a) for a in con.execute(
                    "SELECT at, ok, detail FROM attempts WHERE delivery_id=? ORDER BY id", (d["id"],))]
                summary["deliveries"].append(dd)
        return summary

    def _summaries(self, clause: str, args: list[Any]) -> list[dict[str, Any]]:
        rows = self._store.connection().execute(_SUMMARY_SQL + " " + clause, args).fetchall()
        return [_study_summary(dict(r)) for r in rows]

    def feedback_writer(self) -> FeedbackWriter:
        """The radiologists' feedback writer over the same database (the worklist's one write)."""
        return FeedbackWriter(self._store)

    def studies(self, since: float | None = None, until: float | None = None,
                limit: int = 200) -> list[StudyRecord]:
        """:meth:`list_studies` as the typed read model (no films, deliveries or feedback); a
        study not yet triaged has its identity read from its first spooled instance."""
        rows = self.list_studies(since=since, until=until, limit=limit)
        return [read_model.study_record(r, spool_header=self.first_instance_path) for r in rows]

    def study(self, study_uid: str) -> StudyRecord | None:
        """:meth:`get_study` as the typed read model, films, delivery history and feedback
        included; None for an unknown study."""
        row = self.get_study(study_uid)
        return None if row is None else read_model.study_record(row, row, spool_header=self.first_instance_path)

    def feedback_records(self, study_uid: str) -> list[FeedbackRecord]:
        """One study's assessments, oldest first, typed."""
        return [read_model.feedback_record(f) for f in self.feedback(study_uid)]

    def latest_model(self) -> dict[str, str]:
        """Name, version and operating point of the model behind the newest result (empty
        before the first result)."""
        return read_model.model_of(self.latest_result_json())

    def feedback(self, study_uid: str | None = None, since: float | None = None,
                 until: float | None = None) -> list[dict[str, Any]]:
        """Radiologists' assessments of AI results (oldest first): one study's, or all given
        in [since, until)."""
        clause, args = _where(("study_uid=?", study_uid), ("at>=?", since), ("at<?", until))
        return [dict(r) for r in self._store.connection().execute(
            "SELECT * FROM feedback " + clause + " ORDER BY id", args)]

    def first_instance_path(self, study_uid: str) -> str | None:
        row = self._store.connection().execute(
            "SELECT path FROM instances WHERE study_uid=? ORDER BY received_at LIMIT 1", (study_uid,)).fetchone()
        return None if row is None else str(row[0])

    def current_result_id(self, study_uid: str) -> int | None:
        row = self._store.connection().execute(
            "SELECT result_id FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def patient_results(self, patient_id: str, exclude_study_uid: str = "") -> list[dict[str, Any]]:
        """The current results of other studies of this Patient ID, newest first: study UID,
        accession number, patient name, decision, nodule flag (bool or None), ``triaged_at``
        (Unix s), ``escalated`` (suspicious only by an earlier prior) and the result's SR as built (``sr_uid``, ``sr_series_uid``, ``sr_class_uid``,
        ``sr_path``; None when it has none). Issuer and birth date are in the SR's header."""
        rows = self._store.connection().execute(
            "SELECT s.study_uid, s.accession_number, s.patient_name, s.decision, s.nodule_flag,"
            " s.triaged_at, o.sop_instance_uid AS sr_uid, o.series_uid AS sr_series_uid,"
            " o.sop_class_uid AS sr_class_uid, o.path AS sr_path, r.result_json FROM studies s"
            " JOIN results r ON r.id=s.result_id"
            " LEFT JOIN result_objects o ON o.result_id=s.result_id AND o.sop_class_uid=?"
            " WHERE s.patient_id=? AND s.study_uid<>? AND s.result_id IS NOT NULL"
            " ORDER BY s.triaged_at DESC", (COMPREHENSIVE_3D_SR, patient_id, exclude_study_uid)).fetchall()
        return [{**{k: v for k, v in dict(r).items() if k != "result_json"},
                 "nodule_flag": None if r["nodule_flag"] is None else bool(r["nodule_flag"]),
                 "escalated": read_model.escalation_of(r["result_json"]) is not None} for r in rows]

    def current_result_objects(self, study_uid: str) -> list[ResultObject]:
        rows = self._store.connection().execute(
            "SELECT o.sop_instance_uid, o.series_uid, o.sop_class_uid, o.path FROM result_objects o"
            " JOIN studies s ON s.result_id=o.result_id WHERE s.study_uid=?", (study_uid,)).fetchall()
        return [ResultObject(**dict(r)) for r in rows]


def configured_node_name(store_settings: Any) -> str:
    """This node's name in claims and metrics, from ``cfg.store`` ("" there: the host name)."""
    return StoreOptions.from_settings(store_settings).name


def _where(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """``WHERE a AND b ...`` of the conditions whose value is not None ("" when none), and
    their values: each condition is (SQL with one ``?``, value)."""
    given = [(sql, value) for sql, value in conditions if value is not None]
    clause = "WHERE " + " AND ".join(sql for sql, _ in given) if given else ""
    return clause, [value for _, value in given]


_SUMMARY_SQL = (
    "SELECT s.study_uid, s.state, s.generation, s.decision, s.score, s.nodule_score, s.nodule_flag,"
    " s.first_received_at, s.last_received_at,"
    " s.triaged_at, s.n_instances, s.calling_ae, s.result_id, s.last_error,"
    " s.accession_number, s.patient_id, s.patient_name,"
    " (SELECT COUNT(*) FROM deliveries d WHERE d.result_id=s.result_id) AS n_deliveries,"
    " (SELECT COUNT(*) FROM deliveries d WHERE d.result_id=s.result_id AND d.state='delivered') AS n_delivered,"
    " (SELECT COUNT(*) FROM deliveries d WHERE d.result_id=s.result_id AND d.state='dead') AS n_dead,"
    " (SELECT COUNT(*) FROM deliveries d WHERE d.result_id=s.result_id AND d.state='refused') AS n_refused,"
    " (SELECT COUNT(*) FROM deliveries d WHERE d.result_id=s.result_id AND d.state IN ('pending','sending')"
    "   AND d.attempts>0) AS n_failing,"
    " (SELECT MAX(delivered_at) FROM deliveries d WHERE d.result_id=s.result_id) AS delivered_at,"
    " (SELECT amends FROM results r WHERE r.id=s.result_id) AS amends_result_id,"
    " (SELECT result_json FROM results r WHERE r.id=s.result_id AND s.decision='not_assessable')"
    "   AS not_assessable_json,"
    " (SELECT result_json FROM results r WHERE r.id=s.result_id AND s.decision='suspicious')"
    "   AS suspicious_json,"
    " (SELECT verdict FROM feedback f WHERE f.result_id=s.result_id ORDER BY f.id DESC LIMIT 1)"
    "   AS feedback_verdict,"
    " (SELECT f.\"user\" FROM feedback f WHERE f.result_id=s.result_id ORDER BY f.id DESC LIMIT 1) AS feedback_user"
    " FROM studies s"
)


def _study_summary(r: dict[str, Any]) -> dict[str, Any]:
    n, done, dead, failing = r.pop("n_deliveries"), r.pop("n_delivered"), r.pop("n_dead"), r.pop("n_failing")
    refused = r.pop("n_refused")
    if r["result_id"] is None:
        status = None
    elif n == 0:
        status = "none"
    elif done == n:
        status = "delivered"
    elif dead:
        status = "dead"
    elif refused:
        status = "refused"
    elif failing:
        status = "failing"
    else:
        status = "pending"
    r["delivery_status"] = status
    r["amended"] = r["amends_result_id"] is not None   # the current result replaced an earlier one
    r["nodule_flag"] = None if r["nodule_flag"] is None else bool(r["nodule_flag"])
    r["reasons"] = read_model.reasons_of(r.pop("not_assessable_json"))   # why not assessable
    r["escalation"] = read_model.escalation_of(r.pop("suspicious_json"))  # raised by a prior result
    return r
