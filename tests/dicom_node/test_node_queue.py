"""The job store: state machine, restart recovery, back-off and dead letter, query API."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cxr_triage.dicom_node.store import jobs as Q
from cxr_triage.dicom_node.store.jobs import InstanceRecord, JobStore, ResultObject
from cxr_triage.dicom_node.store.queries import StudyQueries
from cxr_triage.dicom_node.store.spool import Spool, write_atomic


def _inst(sop: str, study: str = "1.2.3", t: float = 100.0) -> InstanceRecord:
    return InstanceRecord(sop, study, "1.2.3.4", "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.1.2.1",
                          f"/spool/{study}/{sop}.dcm", 10, "SCU", t)


def _complete(store: JobStore, study: str, gen: int, dests: list[str], sop: str = "9.9",
              now: float = 200.0) -> int:
    return store.complete_study(study, gen, "suspicious", 0.8, {"decision": "suspicious"},
                                [ResultObject(sop, "9", "1.2.840.10008.5.1.4.1.1.88.34", f"/r/{sop}.dcm")],
                                dests, now=now)


def test_study_waits_for_quiet_period_then_is_claimed_once(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    assert store.add_instance(_inst("1.1", t=100.0))
    assert store.add_instance(_inst("1.2", t=105.0))
    assert store.claim_due_study(10.0, now=110.0) is None        # 5 s quiet only
    claimed = store.claim_due_study(10.0, now=115.5)
    assert claimed is not None and claimed[0] == "1.2.3"
    assert store.claim_due_study(10.0, now=200.0) is None        # already processing
    assert [i.sop_instance_uid for i in store.study_instances("1.2.3")] == ["1.1", "1.2"]


def test_result_delivery_and_queries(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    store.add_instance(_inst("1.1"))
    study, gen = store.claim_due_study(0.0, now=150.0)
    rid = _complete(store, study, gen, ["A@h:1", Q.OUTBOX])
    s = StudyQueries(store).list_studies()[0]
    assert (s["state"], s["decision"], s["score"], s["delivery_status"]) == ("triaged", "suspicious", 0.8, "pending")
    assert StudyQueries(store).oldest_pending(now=300.0)["kind"] == "delivery"
    due = store.due_deliveries(now=200.0)
    assert {d.destination for d in due} == {"A@h:1", Q.OUTBOX}
    assert all(d.result_id == rid and d.objects[0].sop_instance_uid == "9.9" for d in due)
    assert store.due_deliveries(now=200.0) == []                  # marked sending
    for d in due:
        store.delivery_succeeded(d.id, now=201.0)
    assert StudyQueries(store).list_studies()[0]["delivery_status"] == "delivered"
    assert StudyQueries(store).oldest_pending() is None
    c = StudyQueries(store).counts()
    assert c["studies"] == {"triaged": 1} and c["deliveries"] == {"delivered": 2}
    assert c["decisions"] == {"suspicious": 1} and c["instances"] == 1
    detail = StudyQueries(store).get_study("1.2.3")
    assert detail["result"] == {"decision": "suspicious"}
    assert [len(d["attempt_log"]) for d in detail["deliveries"]] == [1, 1]
    assert StudyQueries(store).list_studies(decision="likely_normal") == []


def test_backoff_is_exponential_capped_then_dead(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    store.add_instance(_inst("1.1"))
    study, gen = store.claim_due_study(0.0, now=150.0)
    _complete(store, study, gen, ["A@h:1"], now=1000.0)
    now, delays = 1000.0, []
    for _ in range(6):
        (d,) = store.due_deliveries(now=now)
        state = store.delivery_failed(d.id, "down", 1.0, 8.0, 100.0, now=now)
        assert state == Q.PENDING
        nxt = store.next_delivery_time()
        delays.append(nxt - now)
        assert store.due_deliveries(now=nxt - 0.01) == []          # not before its time
        now = nxt
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert StudyQueries(store).delivery_failures()[0]["last_error"] == "down"
    assert StudyQueries(store).list_studies()[0]["delivery_status"] == "failing"
    (d,) = store.due_deliveries(now=1200.0)
    assert store.delivery_failed(d.id, "down", 1.0, 8.0, 100.0, now=1200.0) == Q.DEAD
    assert store.due_deliveries(now=5000.0) == []
    assert StudyQueries(store).list_studies()[0]["delivery_status"] == "dead"
    assert store.retry_dead(now=5000.0) == 1
    assert len(store.due_deliveries(now=5000.0)) == 1


def test_restart_resumes_interrupted_work(tmp_path: Path) -> None:
    db = tmp_path / "q.sqlite3"
    store = JobStore(db)
    store.add_instance(_inst("1.1", "1.2.3"))
    store.add_instance(_inst("2.1", "4.5.6"))
    a = store.claim_due_study(0.0, now=150.0)
    b = store.claim_due_study(0.0, now=150.0)
    _complete(store, b[0], b[1], ["A@h:1"])
    store.due_deliveries(now=300.0)                                # now 'sending'
    store.close()
    del store                                                      # "crash"
    again = JobStore(db)
    assert again.recover() == {"studies_resumed": 1, "deliveries_resumed": 1}
    assert again.claim_due_study(0.0, now=150.0)[0] == a[0]
    assert len(again.due_deliveries(now=300.0)) == 1


def test_resent_instance_does_not_reopen_a_triaged_study(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    store.add_instance(_inst("1.1"))
    study, gen = store.claim_due_study(0.0, now=150.0)
    _complete(store, study, gen, ["A@h:1"])
    assert store.add_instance(_inst("1.1", t=300.0)) is False      # sender retry after a crash
    assert StudyQueries(store).list_studies()[0]["state"] == "triaged"
    assert store.add_instance(_inst("1.2", t=301.0)) is True       # a genuinely new image
    assert StudyQueries(store).list_studies()[0]["state"] == "receiving"


def test_new_instance_during_triage_supersedes_and_cancels(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    store.add_instance(_inst("1.1"))
    study, gen = store.claim_due_study(0.0, now=150.0)
    store.add_instance(_inst("1.2", t=160.0))                      # arrives mid-triage
    _complete(store, study, gen, ["A@h:1"], sop="9.1")
    assert store.due_deliveries(now=1000.0) == []                  # stale result not sent
    assert StudyQueries(store).list_studies()[0]["state"] == "receiving"
    study, gen2 = store.claim_due_study(0.0, now=170.0)
    assert gen2 > gen
    _complete(store, study, gen2, ["A@h:1"], sop="9.2")
    (d,) = store.due_deliveries(now=1000.0)
    assert d.objects[0].sop_instance_uid == "9.2"
    assert store.is_own_output("9.1", None) and store.is_own_output("x", "9")
    assert not store.is_own_output("1.1", "1.2.3.4")


def test_failed_triage_retries_then_gives_up(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    store.add_instance(_inst("1.1"))
    states = []
    for i in range(3):
        study, gen = store.claim_due_study(0.0, now=1e12)
        states.append(store.fail_study(study, gen, "boom", max_errors=3, now=150.0 + i))
    assert states == ["receiving", "receiving", "failed"]
    assert StudyQueries(store).list_studies()[0]["last_error"] == "boom"


def test_database_is_wal_with_full_sync(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    con = store.connection()
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA synchronous").fetchone()[0] == 2   # FULL
    ro = sqlite3.connect(f"file:{tmp_path / 'q.sqlite3'}?mode=ro", uri=True)
    assert ro.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(Q.SCHEMA_VERSION)


def test_atomic_write_leaves_no_partial_and_sweep(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    p = spool.store("1.2.3", "4.5.6", b"DICM-bytes")
    assert p.read_bytes() == b"DICM-bytes" and p.parent.name == "1.2.3"
    assert spool.path_for("../../etc", "x/y").resolve().is_relative_to((tmp_path / "spool").resolve())
    (p.parent / "7.8.dcm.part").write_bytes(b"half")
    assert spool.sweep_partials() == 1 and spool.files() == [p]
    blocker = tmp_path / "not_a_dir"          # tests run as root: permissions would not stop it
    blocker.write_bytes(b"")
    with pytest.raises(OSError):
        write_atomic(blocker / "y.dcm", b"data")
    assert list(tmp_path.glob("**/*.part")) == []


def test_storage_errors_in_triage_never_give_up(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    store.add_instance(_inst("1.1"))
    for _ in range(6):
        study, gen = store.claim_due_study(0.0, now=1e12)
        assert store.fail_study(study, gen, "disk full", max_errors=3, transient=True, now=150.0) == "receiving"


# -- issue 15: concurrent writers, changed instances, schema migration, bounds, redaction ----

def test_concurrent_writers_of_one_file_each_use_their_own_temporary(tmp_path: Path) -> None:
    """Eight threads write one path at once, twenty times: none fails because of another,
    the file is always one writer's whole content, no temporary file is left."""
    import threading

    target = tmp_path / "study" / "1.2.3.dcm"
    contents = [bytes([i]) * 2_000_000 for i in range(8)]
    errors: list[BaseException] = []
    for _ in range(20):
        barrier = threading.Barrier(len(contents))

        def write(data: bytes, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                write_atomic(target, data)
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(c,)) for c in contents]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert target.read_bytes() in contents
    assert errors == []
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def _inst_sha(sop: str, sha: str | None, path: str | None = None, study: str = "1.2.3",
              t: float = 100.0) -> InstanceRecord:
    return InstanceRecord(sop, study, "1.2.3.4", "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.1.2.1",
                          path or f"/spool/{study}/{sop}.{sha}.dcm", 10, "SCU", t, sha256=sha)


def test_changed_instance_reopens_a_triaged_study_in_a_new_generation(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    store.add_instance(_inst_sha("1.1", "aa", "/spool/1.2.3/1.1.dcm"))
    study, gen = store.claim_due_study(0.0, now=150.0)
    _complete(store, study, gen, ["A@h:1"])
    assert store.add_instance(_inst_sha("1.1", "aa", "/spool/1.2.3/1.1.dcm", t=300.0)) is False
    assert store.instance_conflicts() == []
    assert store.add_instance(_inst_sha("1.1", "bb", t=301.0)) is True     # other content
    s = StudyQueries(store).list_studies()[0]
    assert s["state"] == "receiving" and s["n_instances"] == 1
    (c,) = store.instance_conflicts("1.1")
    assert (c["old_path"], c["old_sha256"], c["new_sha256"]) == ("/spool/1.2.3/1.1.dcm", "aa", "bb")
    assert store.stored_instance("1.1").path == "/spool/1.2.3/1.1.bb.dcm"
    # the superseded file is known, so a restart never imports it as an orphan
    assert {"/spool/1.2.3/1.1.dcm", "/spool/1.2.3/1.1.bb.dcm"} <= store.known_instance_paths()
    study, gen2 = store.claim_due_study(0.0, now=400.0)
    assert gen2 == gen + 1
    _complete(store, study, gen2, ["A@h:1"], sop="9.2", now=401.0)
    (d,) = store.due_deliveries(now=1000.0)                      # the old result's was cancelled
    assert d.objects[0].sop_instance_uid == "9.2"


_V1_INSTANCES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE studies (
    study_uid TEXT PRIMARY KEY, state TEXT NOT NULL, generation INTEGER NOT NULL DEFAULT 1,
    first_received_at REAL NOT NULL, last_received_at REAL NOT NULL, calling_ae TEXT,
    n_instances INTEGER NOT NULL DEFAULT 0, decision TEXT, score REAL, result_id INTEGER,
    triaged_at REAL, errors INTEGER NOT NULL DEFAULT 0, retry_at REAL NOT NULL DEFAULT 0,
    last_error TEXT);
CREATE TABLE instances (
    sop_instance_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, series_uid TEXT,
    sop_class_uid TEXT, transfer_syntax TEXT, path TEXT NOT NULL, size INTEGER,
    calling_ae TEXT, received_at REAL NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO studies (study_uid, state, first_received_at, last_received_at, n_instances, decision)
    VALUES ('1.2.3', 'triaged', 100, 100, 1, 'suspicious');
INSERT INTO instances VALUES ('1.1', '1.2.3', '1.2.3.4', '1.2.840.10008.5.1.4.1.1.1',
    '1.2.840.10008.1.2.1', '/spool/1.2.3/1.1.dcm', 10, 'SCU', 100);
"""


def test_schema_migration_of_an_existing_queue_database(tmp_path: Path) -> None:
    """A queue.sqlite3 written by schema version 1 opens with every row kept, gains the
    per-instance SHA-256 and the conflict table, and works on."""
    db = tmp_path / "queue.sqlite3"
    con = sqlite3.connect(db)
    con.executescript(_V1_INSTANCES)
    con.close()
    store = JobStore(db)
    con = store.connection()
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(Q.SCHEMA_VERSION)
    assert "sha256" in {r[1] for r in con.execute("PRAGMA table_info(instances)")}
    assert {"nodule_score", "nodule_flag"} <= {r[1] for r in con.execute("PRAGMA table_info(studies)")}
    assert StudyQueries(store).list_studies()[0]["nodule_flag"] is None      # kept rows: no output
    old = store.stored_instance("1.1")
    assert old is not None and old.sha256 is None and old.path == "/spool/1.2.3/1.1.dcm"
    assert [i.sop_instance_uid for i in store.study_instances("1.2.3")] == ["1.1"]
    store.set_instance_sha256("1.1", old.path, "aa")                 # filled in on first re-send
    assert store.add_instance(_inst_sha("1.1", "bb", t=200.0)) is True
    assert StudyQueries(store).list_studies()[0]["state"] == "receiving"
    assert len(store.instance_conflicts("1.1")) == 1
    store.close()
    JobStore(db).close()                                             # opening again is a no-op


def test_stored_error_text_is_redacted_like_log_lines(tmp_path: Path) -> None:
    """Exception text quoting header values (pydicom: ``Invalid value for VR DA:
    '17.08.1923'``) is redacted before it is stored: studies, deliveries and attempts."""
    store = JobStore(tmp_path / "q.sqlite3")
    store.add_instance(_inst("1.1"))
    study, gen = store.claim_due_study(0.0, now=150.0)
    store.fail_study(study, gen, "ValueError: Invalid value for VR DA: '17.08.1923' (Quokkafield)",
                     now=151.0)
    assert "17.08.1923" not in StudyQueries(store).list_studies()[0]["last_error"]
    study, gen = store.claim_due_study(0.0, now=1e12)
    _complete(store, study, gen, ["A@h:1"])
    (d,) = store.due_deliveries(now=1000.0)
    store.delivery_failed(d.id, 'peer said "Patient Quokkafield^Wilhelmina unknown"', 1.0, 8.0, 100.0,
                          now=1000.0)
    con = store.connection()
    stored = [r[0] for r in con.execute("SELECT last_error FROM studies")] + \
        [r[0] for r in con.execute("SELECT last_error FROM deliveries")] + \
        [r[0] for r in con.execute("SELECT detail FROM attempts")]
    assert stored and not any(("17.08.1923" in (v or "")) or ("Wilhelmina" in (v or "")) for v in stored)
    assert any("<redacted>" in (v or "") for v in stored)


def test_quarantine_is_bounded_oldest_removed_first(tmp_path: Path) -> None:
    from cxr_triage.dicom_node.store.spool import Quarantine

    by_count = Quarantine(tmp_path / "q1", max_files=3)
    ids = [by_count.put(bytes(100), f"bad {i}").stem for i in range(5)]
    assert [e["id"] for e in by_count.entries()] == ids[2:]
    assert sorted(p.stem for p in by_count.root.glob("*.dcm")) == ids[2:]

    by_bytes = Quarantine(tmp_path / "q2", max_bytes=5_000)
    for i in range(6):
        src = tmp_path / f"in{i}.dcm"
        src.write_bytes(bytes(1_500))
        last = by_bytes.put_file(src, f"bad {i}")
        assert not src.exists()                                   # moved, not copied
    total = sum(p.stat().st_size for p in by_bytes.root.iterdir())
    assert total <= 5_000 and last.is_file()
    assert len(by_bytes.entries()) == 3 and by_bytes.entries()[-1]["id"] == last.stem


def test_audit_log_rotates_by_size_and_keeps_n_files(tmp_path: Path) -> None:
    from cxr_triage.dicom_node.store import audit as A

    path = tmp_path / "audit.jsonl"
    log = A.AuditLog(path, max_bytes=2_000, keep=2)
    for i in range(200):
        log.record(A.INSTANCES_TRANSFERRED, A.SUCCESS, n=i, sop_instance_uid=f"1.2.{i}")
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(p.stat().st_size <= 2_000 for p in tmp_path.iterdir())
    events = A.read_audit(path)
    ns = [e["n"] for e in events]
    assert ns == list(range(ns[0], 200)) and ns[0] > 0              # oldest removed, order kept
    assert [e["n"] for e in A.read_audit(path, rotated_files=False)] == ns[-len(path.read_text().splitlines()):]
    again = A.AuditLog(path, max_bytes=2_000, keep=2)              # a restart appends, then rotates
    again.record(A.APPLICATION_ACTIVITY, A.SUCCESS, n=200)
    again.close()
    assert A.read_audit(path)[-1]["n"] == 200


def test_bounds_are_configured_and_validated(tmp_path: Path, tiny_model: Path) -> None:
    from cxr_triage.config import ConfigError, load_config
    from cxr_triage.dicom_node.service.node import Node

    cfg = load_config(environ={}).replace(
        node={"state_dir": str(tmp_path / "s"), "audit_max_bytes": 5000, "audit_keep_files": 3,
              "quarantine_max_files": 7, "quarantine_max_bytes": 9000, "max_instance_bytes": 1234},
        inference={"model_path": str(tiny_model)}, web={"enabled": False})
    n = Node(cfg)
    assert (n.audit.max_bytes, n.audit.keep) == (5000, 3)
    assert (n.quarantine.max_files, n.quarantine.max_bytes) == (7, 9000)
    n.audit.close()
    for key, bad in (("audit_keep_files", 0), ("max_instance_bytes", -1), ("quarantine_max_files", -2)):
        with pytest.raises(ConfigError, match=key):
            load_config(environ={f"CXR_TRIAGE__NODE__{key.upper()}": str(bad)})


_V2_STUDIES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE studies (
    study_uid TEXT PRIMARY KEY, state TEXT NOT NULL, generation INTEGER NOT NULL DEFAULT 1,
    first_received_at REAL NOT NULL, last_received_at REAL NOT NULL, calling_ae TEXT,
    n_instances INTEGER NOT NULL DEFAULT 0, decision TEXT, score REAL, result_id INTEGER,
    triaged_at REAL, errors INTEGER NOT NULL DEFAULT 0, retry_at REAL NOT NULL DEFAULT 0,
    last_error TEXT);
CREATE TABLE instances (
    sop_instance_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, series_uid TEXT,
    sop_class_uid TEXT, transfer_syntax TEXT, path TEXT NOT NULL, size INTEGER,
    calling_ae TEXT, received_at REAL NOT NULL, sha256 TEXT);
INSERT INTO meta VALUES ('schema_version', '2');
INSERT INTO studies (study_uid, state, first_received_at, last_received_at, n_instances, decision, score)
    VALUES ('1.2.3', 'triaged', 100, 100, 1, 'likely_normal', 0.1);
INSERT INTO instances VALUES ('1.1', '1.2.3', '1.2.3.4', '1.2.840.10008.5.1.4.1.1.1',
    '1.2.840.10008.1.2.1', '/spool/1.2.3/1.1.dcm', 10, 'SCU', 100, 'aa');
"""


def test_schema_3_keeps_the_study_nodule_mass_result(tmp_path: Path) -> None:
    """A version-2 database gains the study's nodule/mass score and flag (null for its rows);
    a result stores them (flag as 1/0, read back as a bool), and without a nodule/mass
    output they stay null."""
    db = tmp_path / "queue.sqlite3"
    con = sqlite3.connect(db)
    con.executescript(_V2_STUDIES)
    con.close()
    store = JobStore(db)
    assert store.connection().execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(
        Q.SCHEMA_VERSION)
    queries = StudyQueries(store)
    old = queries.get_study("1.2.3")
    assert (old["decision"], old["nodule_score"], old["nodule_flag"]) == ("likely_normal", None, None)
    store.add_instance(_inst("2.1", study="2.2.2"))
    study, gen = store.claim_due_study(0.0, now=1e12)
    store.complete_study(study, gen, "likely_normal", 0.1, {"decision": "likely_normal", "nodule_flag": True},
                         [], [], now=200.0, nodule_score=0.71, nodule_flag=True)
    row = queries.get_study("2.2.2")
    assert (row["nodule_score"], row["nodule_flag"]) == (0.71, True)
    store.add_instance(_inst("3.1", study="3.3.3"))
    study, gen = store.claim_due_study(0.0, now=1e12)
    _complete(store, study, gen, [])
    assert queries.list_studies(decision="suspicious")[0]["nodule_flag"] is None
    assert {r["study_uid"]: r["nodule_flag"] for r in queries.list_studies()} == {
        "1.2.3": None, "2.2.2": True, "3.3.3": None}


def _objects(*sops: str) -> list[ResultObject]:
    return [ResultObject(sop, "9", "1.2.840.10008.5.1.4.1.1.88.34" if i == 0 else "1.2.840.10008.5.1.4.1.1.7",
                         f"/r/{sop}.dcm") for i, sop in enumerate(sops)]


def test_one_delivery_per_object_and_destination(tmp_path: Path) -> None:
    """The SR and each summary image are delivered, retried and refused on their own."""
    store = JobStore(tmp_path / "q.sqlite3")
    store.add_instance(_inst("1.1"))
    study, gen = store.claim_due_study(0.0, now=150.0)
    store.complete_study(study, gen, "suspicious", 0.8, {}, _objects("9.1", "9.2"), ["A@h:1", "B@h:2"],
                         now=200.0)
    due = store.due_deliveries(now=200.0)
    assert sorted((d.destination, [o.sop_instance_uid for o in d.objects]) for d in due) == [
        ("A@h:1", ["9.1"]), ("A@h:1", ["9.2"]), ("B@h:2", ["9.1"]), ("B@h:2", ["9.2"])]
    by = {(d.destination, d.objects[0].sop_instance_uid): d for d in due}
    store.delivery_succeeded(by["A@h:1", "9.1"].id, now=201.0)
    store.delivery_succeeded(by["B@h:2", "9.1"].id, now=201.0)
    store.delivery_succeeded(by["B@h:2", "9.2"].id, now=201.0)
    # a permanent refusal: reported as refused, retried only after refused_retry_s
    state = store.delivery_failed(by["A@h:1", "9.2"].id, "status 0xA900", 1.0, 8.0, 1e6, now=201.0,
                                  permanent=True, refused_retry_s=3600.0)
    assert state == Q.REFUSED
    assert store.due_deliveries(now=201.0 + 300.0) == []
    assert StudyQueries(store).list_studies()[0]["delivery_status"] == "refused"
    (f,) = StudyQueries(store).delivery_failures()
    assert (f["state"], f["sop_instance_uid"], f["sop_class_uid"]) == ("refused", "9.2", "1.2.840.10008.5.1.4.1.1.7")
    assert StudyQueries(store).oldest_pending() is None            # nothing transient is owed
    (again,) = store.due_deliveries(now=201.0 + 3600.0)           # the slow retry
    store.delivery_succeeded(again.id, now=3900.0)
    assert StudyQueries(store).list_studies()[0]["delivery_status"] == "delivered"


def test_refused_deliveries_die_of_age_and_are_requeued_by_the_operator(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "q.sqlite3")
    store.add_instance(_inst("1.1"))
    study, gen = store.claim_due_study(0.0, now=150.0)
    store.complete_study(study, gen, "suspicious", 0.8, {}, _objects("9.1"), ["A@h:1"], now=200.0)
    (d,) = store.due_deliveries(now=200.0)
    assert store.delivery_failed(d.id, "refused", 1.0, 8.0, 100.0, now=201.0, permanent=True) == Q.REFUSED
    assert store.retry_dead(now=300.0) == 1                       # `status --retry-dead`
    (d,) = store.due_deliveries(now=300.0)
    assert store.delivery_failed(d.id, "refused", 1.0, 8.0, 100.0, now=500.0, permanent=True) == Q.DEAD


_V3_DELIVERY = """
INSERT INTO studies (study_uid, state, first_received_at, last_received_at, n_instances, decision,
    result_id) VALUES ('1.2.3', 'triaged', 100, 100, 1, 'suspicious', 1);
INSERT INTO results (id, study_uid, generation, decision, score, result_json, created_at, superseded)
    VALUES (1, '1.2.3', 1, 'suspicious', 0.8, '{}', 150, 0);
INSERT INTO result_objects VALUES ('9.1', 1, '9', '1.2.840.10008.5.1.4.1.1.88.34', '/r/9.1.dcm');
INSERT INTO result_objects VALUES ('9.2', 1, '9', '1.2.840.10008.5.1.4.1.1.7', '/r/9.2.dcm');
INSERT INTO deliveries (result_id, destination, state, next_attempt_at, created_at)
    VALUES (1, 'A@h:1', 'pending', 150, 150);
UPDATE meta SET value='3' WHERE key='schema_version';
"""


def test_schema_4_keeps_whole_result_deliveries_of_older_databases(tmp_path: Path) -> None:
    """A delivery written before deliveries were per object (no object named) still sends
    every object of its result."""
    db = tmp_path / "queue.sqlite3"
    JobStore(db).close()
    con = sqlite3.connect(db)
    con.execute("PRAGMA foreign_keys=OFF")
    # a version-3 deliveries table has no object column
    con.executescript("DROP TABLE deliveries; CREATE TABLE deliveries (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                      " result_id INTEGER NOT NULL, destination TEXT NOT NULL, state TEXT NOT NULL,"
                      " attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,"
                      " created_at REAL NOT NULL, delivered_at REAL, last_error TEXT);" + _V3_DELIVERY)
    con.close()
    store = JobStore(db)
    assert "sop_instance_uid" in {r[1] for r in store.connection().execute("PRAGMA table_info(deliveries)")}
    (d,) = store.due_deliveries(now=200.0)
    assert sorted(o.sop_instance_uid for o in d.objects) == ["9.1", "9.2"]
