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
    assert ro.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "1"


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
