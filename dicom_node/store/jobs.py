"""The node's job store: an embedded SQLite database (WAL, synchronous=FULL).

It is the single source of truth for what was received and what is owed to whom, so a
restart (or ``kill -9``) resumes every unfinished job: see :meth:`JobStore.recover`.

State machines::

    study:    receiving --(quiet period)--> processing --> triaged
                  ^   new instance (generation+1)  |         |
                  +--------------------------------+---------+      processing --(errors)--> failed
    delivery: pending --> sending --> delivered
                 ^           |  transient failure: back-off, attempts+1
                 +-----------+--> dead (older than dead_letter_after_s)      pending --> cancelled
                             |                                        (result superseded)
                             +--> refused (a permanent refusal, e.g. 0xA9xx, 0xC000: retried
                                  only every refused_retry_s, reported; dead when too old)

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

This module is the write side. The read side (counts, oldest pending, list/get studies,
failures: the API of ``cxr-triage status``, the web worklist and metrics) is
:class:`~cxr_triage.dicom_node.store.queries.StudyQueries`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from cxr_triage.logs import redact_values

SCHEMA_VERSION = 7

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    study_uid          TEXT PRIMARY KEY,
    state              TEXT NOT NULL,
    generation         INTEGER NOT NULL DEFAULT 1,
    first_received_at  REAL NOT NULL,
    last_received_at   REAL NOT NULL,
    calling_ae         TEXT,
    n_instances        INTEGER NOT NULL DEFAULT 0,
    decision           TEXT,
    score              REAL,
    nodule_score       REAL,
    nodule_flag        INTEGER,
    result_id          INTEGER,
    triaged_at         REAL,
    errors             INTEGER NOT NULL DEFAULT 0,
    retry_at           REAL NOT NULL DEFAULT 0,
    last_error         TEXT,
    accession_number   TEXT,              -- who and which order, for the people reading the
    patient_id         TEXT,              -- worklist (PHI: shown behind the login, never
    patient_name       TEXT               -- logged, never in metrics)
);
CREATE INDEX IF NOT EXISTS studies_state ON studies(state, last_received_at);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid   TEXT PRIMARY KEY,
    study_uid          TEXT NOT NULL,
    series_uid         TEXT,
    sop_class_uid      TEXT,
    transfer_syntax    TEXT,
    path               TEXT NOT NULL,
    size               INTEGER,
    calling_ae         TEXT,
    received_at        REAL NOT NULL,
    sha256             TEXT
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS results (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid          TEXT NOT NULL,
    generation         INTEGER NOT NULL,
    decision           TEXT NOT NULL,
    score              REAL,
    result_json        TEXT NOT NULL,
    created_at         REAL NOT NULL,
    superseded         INTEGER NOT NULL DEFAULT 0,
    amends             INTEGER                -- the result this one replaced (an amended result)
);
CREATE INDEX IF NOT EXISTS results_study ON results(study_uid);
CREATE TABLE IF NOT EXISTS result_objects (
    sop_instance_uid   TEXT PRIMARY KEY,
    result_id          INTEGER NOT NULL REFERENCES results(id),
    series_uid         TEXT NOT NULL,
    sop_class_uid      TEXT NOT NULL,
    path               TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS result_objects_series ON result_objects(series_uid);
CREATE INDEX IF NOT EXISTS result_objects_result ON result_objects(result_id);
CREATE TABLE IF NOT EXISTS deliveries (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    result_id          INTEGER NOT NULL REFERENCES results(id),
    destination        TEXT NOT NULL,
    state              TEXT NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at    REAL NOT NULL,
    created_at         REAL NOT NULL,
    delivered_at       REAL,
    last_error         TEXT,
    sop_instance_uid   TEXT               -- the one result object sent (NULL: all, schema <= 3)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_result ON deliveries(result_id);
CREATE TABLE IF NOT EXISTS attempts (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id        INTEGER NOT NULL REFERENCES deliveries(id),
    at                 REAL NOT NULL,
    ok                 INTEGER NOT NULL,
    detail             TEXT
);
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts(delivery_id);
"""

# Tables and indexes added after version 1 (2: instance_conflicts, 6: feedback); created by
# _migrate on an existing database too.
_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS instance_conflicts (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid   TEXT NOT NULL,
    study_uid          TEXT NOT NULL,
    old_path           TEXT NOT NULL,
    old_sha256         TEXT,
    new_path           TEXT NOT NULL,
    new_sha256         TEXT NOT NULL,
    calling_ae         TEXT,
    detected_at        REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instance_conflicts_sop ON instance_conflicts(sop_instance_uid);
CREATE TABLE IF NOT EXISTS feedback (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid          TEXT NOT NULL,
    result_id          INTEGER NOT NULL REFERENCES results(id),
    verdict            TEXT NOT NULL,      -- accept | reject (IHE AI Result Assessment)
    finding            TEXT,               -- what the radiologist saw (a FINDINGS key), optional
    user               TEXT NOT NULL,      -- the named login or the reverse proxy's user
    at                 REAL NOT NULL,
    decision           TEXT,               -- the AI result assessed: decision, score,
    score              REAL,
    model_name         TEXT,               -- model and operating point that made it
    model_version      TEXT,
    operating_point    TEXT,
    threshold          REAL
);
CREATE INDEX IF NOT EXISTS feedback_study ON feedback(study_uid, id);
"""

# Columns added after version 1, (table, column, type), by the version that added them.
# Version 3: the study's nodule/mass result (score; flag 1/0; both NULL when the model had no
# nodule/mass output), so the worklist lists the flag without reading every result's JSON.
_ADDED_COLUMNS = (
    ("instances", "sha256", "TEXT"),            # 2
    ("studies", "nodule_score", "REAL"),        # 3
    ("studies", "nodule_flag", "INTEGER"),      # 3
    ("deliveries", "sop_instance_uid", "TEXT"), # 4: one delivery per result object
    ("results", "amends", "INTEGER"),           # 5: an amended result names the one it replaced
    ("studies", "accession_number", "TEXT"),    # 7: the study as people know it
    ("studies", "patient_id", "TEXT"),          # 7
    ("studies", "patient_name", "TEXT"),        # 7
)

# study states
RECEIVING, PROCESSING, TRIAGED, FAILED = "receiving", "processing", "triaged", "failed"
# delivery states
PENDING, SENDING, DELIVERED, DEAD, CANCELLED = "pending", "sending", "delivered", "dead", "cancelled"
REFUSED = "refused"  # permanently refused by the destination; retried slowly, reported
FEEDBACK_VERDICTS = ("accept", "reject")
#: The study as people know it: studies column -> the DICOM attribute it is read from (PHI: the
#: worklist shows them behind its login, never logged)
IDENTITY_KEYWORDS = {"accession_number": "AccessionNumber", "patient_id": "PatientID", "patient_name": "PatientName"}
IDENTITY_FIELDS = tuple(IDENTITY_KEYWORDS)
OUTBOX = "outbox"  # the destination name of the local outbox folder
HL7_PREFIX = "hl7:"  # "hl7:APP@host:port": an HL7 v2 ORU^R01 to a RIS (one per result, no object)


def identity_from_headers(headers: Iterable[Any]) -> dict[str, str]:
    """:data:`IDENTITY_FIELDS` of a study from its instances' headers (pydicom data sets): each
    from the first header that has it, "" where none has."""
    out = dict.fromkeys(IDENTITY_FIELDS, "")
    for ds in headers:
        for key, keyword in IDENTITY_KEYWORDS.items():
            if not out[key]:
                out[key] = str(ds.get(keyword, "") or "").strip()
    return out


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


class JobStore:
    """Thread-safe access to ``queue.sqlite3``: one connection per thread."""

    def __init__(self, path: Path, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy = busy_timeout_s
        self._local = threading.local()
        con = self._con()
        con.executescript(_SCHEMA)
        self._migrate(con)

    @staticmethod
    def _migrate(con: sqlite3.Connection) -> None:
        """Bring a database of any earlier schema version up to :data:`SCHEMA_VERSION`, in
        one transaction (an existing ``queue.sqlite3`` keeps all its rows)."""
        def current() -> bool:
            row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            return row is not None and row[0] == str(SCHEMA_VERSION)

        if current():                                   # the usual case: no write lock taken
            return
        con.execute("BEGIN IMMEDIATE")
        try:
            row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else SCHEMA_VERSION
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"queue database schema version {version} is newer than this node's "
                    f"({SCHEMA_VERSION})")
            for table, column, sql_type in _ADDED_COLUMNS:          # versions 1 -> 2 -> 3
                if column not in {r[1] for r in con.execute(f"PRAGMA table_info({table})")}:
                    con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")
            for stmt in _SCHEMA_V2.split(";"):
                if stmt.strip():
                    con.execute(stmt)
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                        (str(SCHEMA_VERSION),))
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    # -- connections -------------------------------------------------------------------
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
        the methods of this class."""
        return self._con()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken with BEGIN IMMEDIATE (no lock upgrades, no deadlocks)."""
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection."""
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

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
            con.execute(
                "INSERT OR REPLACE INTO instances VALUES (?,?,?,?,?,?,?,?,?,?)",
                (rec.sop_instance_uid, rec.study_uid, rec.series_uid, rec.sop_class_uid,
                 rec.transfer_syntax, rec.path, rec.size, rec.calling_ae, rec.received_at,
                 rec.sha256),
            )
            duplicate = old is not None and old["study_uid"] == rec.study_uid and not changed
            if old is not None and old["study_uid"] != rec.study_uid:
                self._count_instances(con, old["study_uid"])
            study = con.execute("SELECT state FROM studies WHERE study_uid=?",
                                (rec.study_uid,)).fetchone()
            if study is None:
                con.execute(
                    "INSERT INTO studies (study_uid, state, first_received_at, last_received_at,"
                    " calling_ae, n_instances) VALUES (?,?,?,?,?,1)",
                    (rec.study_uid, RECEIVING, rec.received_at, rec.received_at, rec.calling_ae),
                )
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
    def _count_instances(con: sqlite3.Connection, study_uid: str) -> None:
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
            self._set_identity(con, study_uid, identity)

    @staticmethod
    def _set_identity(con: sqlite3.Connection, study_uid: str, identity: dict[str, str]) -> None:
        values = [str(identity.get(k) or "") or None for k in IDENTITY_FIELDS]
        con.execute("UPDATE studies SET accession_number=?, patient_id=?, patient_name=? WHERE study_uid=?",
                    (*values, study_uid))

    def add_feedback(self, study_uid: str, result_id: int, verdict: str, user: str, *,
                     finding: str | None = None, decision: str | None = None, score: float | None = None,
                     model_name: str | None = None, model_version: str | None = None,
                     operating_point: str | None = None, threshold: float | None = None,
                     now: float | None = None) -> int:
        """A radiologist's assessment of a study's AI result (accept / reject, optionally the
        finding seen), with who, when, and the model and threshold behind the result."""
        if verdict not in FEEDBACK_VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(FEEDBACK_VERDICTS)}")
        if not user:
            raise ValueError("feedback needs the user who gave it")
        now = time.time() if now is None else now
        with self._tx() as con:
            fid = con.execute(
                "INSERT INTO feedback (study_uid, result_id, verdict, finding, user, at, decision, score,"
                " model_name, model_version, operating_point, threshold) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (study_uid, result_id, verdict, finding or None, user, now, decision, score, model_name,
                 model_version, operating_point, threshold)).lastrowid
            return int(fid or 0)

    def add_result_object(self, result_id: int, obj: ResultObject) -> None:
        """One more object of a result, made after it was stored (a fallback SR the
        deliverer wrote): the own-output check and the study page then know it."""
        with self._tx() as con:
            con.execute("INSERT OR IGNORE INTO result_objects VALUES (?,?,?,?,?)",
                        (obj.sop_instance_uid, result_id, obj.series_uid, obj.sop_class_uid, obj.path))

    def is_own_output(self, sop_instance_uid: str, series_uid: str | None) -> bool:
        """True for an object this node produced (a PACS sending our results back)."""
        row = self._con().execute(
            "SELECT 1 FROM result_objects WHERE sop_instance_uid=? OR series_uid=? LIMIT 1",
            (sop_instance_uid, series_uid or ""),
        ).fetchone()
        return row is not None

    # -- triage ------------------------------------------------------------------------
    def claim_due_study(self, quiet_period_s: float, now: float | None = None) -> tuple[str, int] | None:
        """Take the oldest study that has been quiet long enough: (study_uid, generation)."""
        now = time.time() if now is None else now
        sql = ("SELECT study_uid, generation FROM studies WHERE state=? AND last_received_at<=?"
               " AND retry_at<=? ORDER BY last_received_at LIMIT 1")
        args = (RECEIVING, now - quiet_period_s, now)
        if self._con().execute(sql, args).fetchone() is None:   # cheap poll without the write lock
            return None
        with self._tx() as con:
            row = con.execute(sql, args).fetchone()
            if row is None:
                return None
            con.execute("UPDATE studies SET state=? WHERE study_uid=?", (PROCESSING, row["study_uid"]))
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
    ) -> int:
        """Store a result and its deliveries atomically; returns the result id.

        ``nodule_score`` / ``nodule_flag``: the study's nodule/mass result (None: the model
        has no nodule/mass output), kept on the study row for the worklist.
        ``amends_result_id``: the earlier result this one replaces (its SR names that
        result's SR as predecessor). ``identity``: the study's accession number, patient ID
        and name (:data:`IDENTITY_FIELDS`) for the worklist.

        If new instances arrived while triaging (generation moved on), the result is kept
        for the record but superseded at once and not delivered: the study is triaged again.
        """
        now = time.time() if now is None else now
        with self._tx() as con:
            cur = con.execute("SELECT generation FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
            current = cur is not None and cur["generation"] == generation
            rid = con.execute(
                "INSERT INTO results (study_uid, generation, decision, score, result_json, created_at,"
                " superseded, amends) VALUES (?,?,?,?,?,?,?,?)",
                (study_uid, generation, decision, score, json.dumps(result), now, 0 if current else 1,
                 amends_result_id),
            ).lastrowid
            if rid is None:  # pragma: no cover - an INSERT always sets lastrowid
                raise sqlite3.DatabaseError("result row not inserted")
            for o in objects:
                con.execute("INSERT OR REPLACE INTO result_objects VALUES (?,?,?,?,?)",
                            (o.sop_instance_uid, rid, o.series_uid, o.sop_class_uid, o.path))
            if not current:
                con.execute("UPDATE studies SET state=? WHERE study_uid=?", (RECEIVING, study_uid))
                return int(rid)
            # supersede older results and cancel what they still owed
            old = [r[0] for r in con.execute(
                "SELECT id FROM results WHERE study_uid=? AND id<>? AND superseded=0", (study_uid, rid))]
            for oid in old:
                con.execute("UPDATE results SET superseded=1 WHERE id=?", (oid,))
                con.execute("UPDATE deliveries SET state=? WHERE result_id=? AND state IN (?,?,?)",
                            (CANCELLED, oid, PENDING, SENDING, REFUSED))
            for dest in destinations:           # one delivery per object and destination
                if dest.startswith(HL7_PREFIX):     # one message per result
                    con.execute(
                        "INSERT INTO deliveries (result_id, destination, state, next_attempt_at,"
                        " created_at) VALUES (?,?,?,?,?)", (rid, dest, PENDING, now, now))
                    continue
                for o in objects:
                    con.execute(
                        "INSERT INTO deliveries (result_id, destination, state, next_attempt_at,"
                        " created_at, sop_instance_uid) VALUES (?,?,?,?,?,?)",
                        (rid, dest, PENDING, now, now, o.sop_instance_uid))
            con.execute(
                "UPDATE studies SET state=?, decision=?, score=?, nodule_score=?, nodule_flag=?,"
                " result_id=?, triaged_at=?, errors=0, last_error=NULL WHERE study_uid=?",
                (TRIAGED, decision, score, nodule_score,
                 None if nodule_flag is None else int(bool(nodule_flag)), rid, now, study_uid))
            if identity:
                self._set_identity(con, study_uid, identity)
            return int(rid)

    def fail_study(self, study_uid: str, generation: int, error: str, max_errors: int = 3,
                   retry_after_s: float = 5.0, transient: bool = False,
                   now: float | None = None) -> str:
        """An error while triaging: retry later, or give up (state ``failed``) after
        ``max_errors``. A ``transient`` error (disk full, database busy) never gives up: the
        study waits, backing off up to a minute, until storage works again."""
        now = time.time() if now is None else now
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

    # -- delivery ----------------------------------------------------------------------
    def due_deliveries(self, now: float | None = None, limit: int = 100) -> list[DueDelivery]:
        """Pending (and refused) deliveries whose back-off has expired, oldest first, marked
        ``sending``. Each carries its one object (every object of the result for a delivery
        made before schema version 4)."""
        now = time.time() if now is None else now
        if self._con().execute("SELECT 1 FROM deliveries WHERE state IN (?,?) AND next_attempt_at<=?"
                               " LIMIT 1", (PENDING, REFUSED, now)).fetchone() is None:
            return []
        with self._tx() as con:
            rows = con.execute(
                "SELECT d.id, d.result_id, r.study_uid, d.destination, d.attempts, d.created_at,"
                " d.sop_instance_uid FROM deliveries d JOIN results r ON r.id=d.result_id"
                " WHERE d.state IN (?,?) AND d.next_attempt_at<=? ORDER BY d.next_attempt_at, d.id"
                " LIMIT ?", (PENDING, REFUSED, now, limit)).fetchall()
            out = []
            for r in rows:
                objs = con.execute(
                    "SELECT sop_instance_uid, series_uid, sop_class_uid, path FROM result_objects"
                    " WHERE result_id=? AND (? IS NULL OR sop_instance_uid=?)"
                    " ORDER BY sop_class_uid DESC", (r["result_id"], r["sop_instance_uid"],
                                                     r["sop_instance_uid"])).fetchall()
                con.execute("UPDATE deliveries SET state=? WHERE id=?", (SENDING, r["id"]))
                out.append(DueDelivery(r["id"], r["result_id"], r["study_uid"], r["destination"],
                                       r["attempts"], r["created_at"],
                                       tuple(ResultObject(**dict(o)) for o in objs)))
            return out

    def delivery_succeeded(self, delivery_id: int, detail: str = "", now: float | None = None) -> None:
        now = time.time() if now is None else now
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
            return con.execute("UPDATE deliveries SET state=?, next_attempt_at=?, created_at=?"
                               " WHERE state IN (?,?)", (PENDING, now, now, DEAD, REFUSED)).rowcount

    # -- restart -----------------------------------------------------------------------
    def recover(self, studies: bool = True, deliveries: bool = True) -> dict[str, int]:
        """After a crash or restart (or an error in the one thread that owns that state):
        interrupted triage and sends go back in the queue."""
        with self._tx() as con:
            n_studies = con.execute("UPDATE studies SET state=? WHERE state=?",
                                    (RECEIVING, PROCESSING)).rowcount if studies else 0
            n_sends = con.execute("UPDATE deliveries SET state=? WHERE state=?",
                                  (PENDING, SENDING)).rowcount if deliveries else 0
        return {"studies_resumed": n_studies, "deliveries_resumed": n_sends}
