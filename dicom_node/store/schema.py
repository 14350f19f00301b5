"""The job store's tables, their migration and the state names the rows carry.

The one place the SQL schema is written, in SQLite's dialect; :func:`pg_ddl` turns it into
PostgreSQL's (64-bit integers, double precision timestamps, identity columns). Versions: 1 the
first layout; 2 changed instances (``instances.sha256``, ``instance_conflicts``); 3 the
nodule/mass result on the study row; 4 one delivery per result object; 5 amended results;
6 radiologist feedback; 7 the study's identity (accession number, patient ID and name);
8 several nodes on one database: claims with leases (``claimed_by``, ``lease_until`` on studies
and deliveries), the ``nodes`` table, one current result per study generation (a unique index).

Migrations are versioned by ``meta.schema_version`` and additive only (new tables, indexes and
nullable columns), applied at start by :func:`migrate` (SQLite) or :func:`migrate_pg` (under an
advisory lock, so nodes starting together migrate once). Alembic was not used: it brings
SQLAlchemy and a migration-script tree for what is, eight versions on, a list of added columns
and ``CREATE ... IF NOT EXISTS`` statements both engines run as they are.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any, Callable

SCHEMA_VERSION = 8

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
    patient_name       TEXT,              -- logged, never in metrics)
    claimed_by         TEXT,              -- the node triaging it (state processing) ...
    lease_until        REAL               -- ... until then, unless its heartbeat renews it
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
    sop_instance_uid   TEXT,              -- the one result object sent (NULL: all, schema <= 3)
    claimed_by         TEXT,              -- the node sending it (state sending) ...
    lease_until        REAL               -- ... until then, unless its heartbeat renews it
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

# Tables and indexes added after version 1 (2: instance_conflicts, 6: feedback, 8: nodes and the
# unique current result); created by
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
    "user"             TEXT NOT NULL,      -- the named login or the reverse proxy's user
    at                 REAL NOT NULL,
    decision           TEXT,               -- the AI result assessed: decision, score,
    score              REAL,
    model_name         TEXT,               -- model and operating point that made it
    model_version      TEXT,
    operating_point    TEXT,
    threshold          REAL
);
CREATE INDEX IF NOT EXISTS feedback_study ON feedback(study_uid, id);
CREATE TABLE IF NOT EXISTS nodes (
    node_name          TEXT PRIMARY KEY,
    host               TEXT,
    pid                INTEGER,
    started_at         REAL NOT NULL,
    last_heartbeat     REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS results_current ON results(study_uid, generation) WHERE superseded=0;
CREATE INDEX IF NOT EXISTS studies_claims ON studies(claimed_by, state);
CREATE INDEX IF NOT EXISTS deliveries_claims ON deliveries(claimed_by, state);
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
    ("studies", "claimed_by", "TEXT"),          # 8: claims with leases
    ("studies", "lease_until", "REAL"),         # 8
    ("deliveries", "claimed_by", "TEXT"),       # 8
    ("deliveries", "lease_until", "REAL"),      # 8
)
_SET_VERSION = ("INSERT INTO meta VALUES ('schema_version', ?)"
                " ON CONFLICT (key) DO UPDATE SET value=excluded.value")
_PG_TYPES = ((r"INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
             (r"\bREAL\b", "DOUBLE PRECISION"), (r"\bINTEGER\b", "BIGINT"))
_MIGRATION_LOCK = 0x63787274  # pg_advisory_xact_lock key ("cxrt"): one node migrates at a time

# study states
RECEIVING, PROCESSING, TRIAGED, FAILED = "receiving", "processing", "triaged", "failed"
# delivery states
PENDING, SENDING, DELIVERED, DEAD, CANCELLED = "pending", "sending", "delivered", "dead", "cancelled"
REFUSED = "refused"  # permanently refused by the destination; retried slowly, reported


def migrate(con: sqlite3.Connection) -> None:
    """Create the tables if missing and bring a database of any earlier schema version up to
    :data:`SCHEMA_VERSION`, in one transaction (an existing ``queue.sqlite3`` keeps all its
    rows). ``sqlite3.DatabaseError`` for a database newer than this node."""
    con.executescript(_SCHEMA)
    if _version(con) == str(SCHEMA_VERSION):          # the usual case: no write lock taken
        return
    con.execute("BEGIN IMMEDIATE")
    try:
        found = _version(con)
        version = int(found) if found else SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"queue database schema version {version} is newer than this node's "
                f"({SCHEMA_VERSION})")
        for table, column, sql_type in _ADDED_COLUMNS:          # versions 1 -> 2 -> 3 ...
            if column not in {r[1] for r in con.execute(f"PRAGMA table_info({table})")}:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")
        for stmt in statements(_SCHEMA_V2):
            con.execute(stmt)
        con.execute(_SET_VERSION, (str(SCHEMA_VERSION),))
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def statements(script: str) -> list[str]:
    """The statements of a DDL script (split at ``;``, blank ones dropped)."""
    return [s for s in script.split(";") if s.strip()]


def pg_ddl(script: str) -> str:
    """SQLite DDL as PostgreSQL DDL: 64-bit integers, identity keys, double precision
    (PostgreSQL's ``REAL`` is 4 bytes: Unix seconds would lose minutes)."""
    for pattern, repl in _PG_TYPES:
        script = re.sub(pattern, repl, script)
    return script


def migrate_pg(transaction: Callable[[], Any]) -> None:
    """:func:`migrate` for PostgreSQL: ``transaction()`` gives a connection context
    (:meth:`.pg.PgPool.transaction`); all in one transaction under an advisory lock.
    ``sqlite3.DatabaseError`` for a database newer than this node."""
    with transaction() as con:
        con.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
        for stmt in statements(pg_ddl(_SCHEMA)):
            con.execute(stmt)
        found = _version(con)
        if found is not None and int(found) > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"job store schema version {found} is newer than this "
                                        f"node's ({SCHEMA_VERSION})")
        if found == str(SCHEMA_VERSION):
            return
        for table, column, sql_type in _ADDED_COLUMNS:
            con.execute(pg_ddl(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {sql_type}"))
        for stmt in statements(pg_ddl(_SCHEMA_V2)):
            con.execute(stmt)
        con.execute(_SET_VERSION, (str(SCHEMA_VERSION),))


def _version(con: Any) -> str | None:
    row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return None if row is None else str(row[0])
