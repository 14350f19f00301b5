"""The job store on a real PostgreSQL server shared by several JobStores ("nodes").

Claims never hand one study (or delivery) to two nodes; a claim whose lease runs out is taken
over and the late node's result does not count; one current result per study generation; a
database restart makes statements fail as transient (``sqlite3.OperationalError``), and the
same store works again once the server is back; C-STORE answers 0xA700 while it is down.
The server is started by tests/support/postgres_server.py (skipped without the binaries).
"""

from __future__ import annotations

import itertools
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import pytest
from pydicom import dcmread
from support.node_peers import wait_for
from support.postgres_server import PostgresServer, skip_reason, started_server
from support.receive_support import instance_of_size

from cxr_triage.dicom_node.receive.scp import StoreHandler
from cxr_triage.dicom_node.store import nodes
from cxr_triage.dicom_node.store.audit import AuditLog
from cxr_triage.dicom_node.store.db import StoreOptions
from cxr_triage.dicom_node.store.jobs import InstanceRecord, JobStore, ResultObject
from cxr_triage.dicom_node.store.pg import StoreUnavailable, mask_dsn
from cxr_triage.dicom_node.store.queries import StudyQueries
from cxr_triage.dicom_node.store.schema import SCHEMA_VERSION
from cxr_triage.dicom_node.store.spool import Quarantine, Spool, StateDirs

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
_DB_IDS = itertools.count()
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    srv = started_server()
    yield srv
    srv.destroy()


@pytest.fixture
def dsn(server: PostgresServer) -> str:
    """A fresh database of its own for each test."""
    name = f"t{next(_DB_IDS)}"
    server.psql(f"CREATE DATABASE {name}")
    return server.dsn.replace("dbname=cxr", f"dbname={name}")


def _node(dsn: str, name: str, lease_s: float = 30.0) -> JobStore:
    return JobStore(Path("/nonexistent/queue.sqlite3"),
                    options=StoreOptions("postgresql", dsn, name, lease_s, connect_timeout_s=2.0))


def _receive(store: JobStore, study: str, sop: str, at: float | None = None) -> bool:
    at = time.time() - 60 if at is None else at
    return store.add_instance(InstanceRecord(sop, study, study + ".1", "1.2.840.10008.5.1.4.1.1.1.1",
                                             "1.2.840.10008.1.2.1", f"/spool/{sop}.dcm", 10, "SCU", at,
                                             sha256=sop))


def _complete(store: JobStore, study: str, generation: int) -> int:
    sr = ResultObject(f"{study}.{generation}.{store.node_name}.9", f"{study}.9", SR_CLASS, "/results/sr.dcm")
    return store.complete_study(study, generation, "likely_normal", 0.1, {"node": store.node_name},
                                [sr], ["outbox"])


def _retry(fn: Callable[..., bool], *args: object) -> bool:
    """``fn(*args)``; False while the database is unavailable."""
    try:
        return fn(*args)
    except sqlite3.OperationalError:
        return False


def test_schema_created_once_by_nodes_starting_together(dsn: str) -> None:
    stores: list[JobStore] = []
    threads = [threading.Thread(target=lambda i=i: stores.append(_node(dsn, f"n{i}"))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stores) == 3
    row = stores[0].connection().execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    assert row[0] == str(SCHEMA_VERSION)
    for s in stores:
        s.dispose()


def test_concurrent_claims_never_give_one_study_twice(dsn: str) -> None:
    a, b = _node(dsn, "node-a"), _node(dsn, "node-b")
    studies = [f"2.25.{i}" for i in range(40)]
    for i, study in enumerate(studies):                  # received round robin over the two nodes
        _receive((a, b)[i % 2], study, study + ".1")
        _receive((b, a)[i % 2], study, study + ".2")     # each study split across both
    claims: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(store: JobStore) -> None:
        while (got := store.claim_due_study(0)) is not None:
            with lock:
                claims.append((got[0], store.node_name))

    threads = [threading.Thread(target=worker, args=(s,)) for s in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [c[0] for c in claims]
    assert sorted(claimed) == sorted(studies)            # every study once, none twice
    assert {c[1] for c in claims} == {"node-a", "node-b"}
    counts = StudyQueries(a).counts()
    assert counts["instances"] == 80 and counts["studies"] == {"processing": 40}
    held = {n["node_name"]: n["studies_held"] for n in StudyQueries(a).nodes()}
    assert sum(held.values()) == 40
    a.dispose()
    b.dispose()


def _two_nodes_a_claimed(dsn: str, study: str) -> tuple[JobStore, JobStore, int]:
    """Nodes a and b (1 s leases); ``study`` received and claimed by a: (a, b, generation)."""
    a, b = _node(dsn, "node-a", lease_s=1.0), _node(dsn, "node-b", lease_s=1.0)
    _receive(a, study, study + ".1")
    claimed = a.claim_due_study(0)
    assert claimed is not None and claimed[0] == study
    return a, b, claimed[1]


def test_expired_lease_is_taken_over_and_the_late_result_does_not_count(dsn: str) -> None:
    study = "2.25.7"
    a, b, gen = _two_nodes_a_claimed(dsn, study)
    assert b.claim_due_study(0) is None    # the lease holds while a beats
    time.sleep(1.5)
    assert b.claim_due_study(0) is None                           # a's heartbeat renewed it
    a.dispose()                                                   # node a dies: no more beats
    time.sleep(1.3)
    assert b.claim_due_study(0) == ("2.25.7", gen)                # taken over
    late = _node(dsn, "node-a", lease_s=1.0)                      # a's work finishes late
    _complete(late, study, gen)
    rid = _complete(b, study, gen)
    rows = b.connection().execute("SELECT id, superseded FROM results WHERE study_uid=?", (study,)).fetchall()
    assert [r["id"] for r in rows if r["superseded"] == 0] == [rid]        # one current result
    assert StudyQueries(b).get_study(study)["result_id"] == rid
    with pytest.raises(sqlite3.IntegrityError):                            # the constraint itself
        with b.transaction() as con:
            con.execute("INSERT INTO results (study_uid, generation, decision, result_json, created_at)"
                        " VALUES (?,?,?,?,?)", (study, gen, "x", "{}", 0.0))
    late.dispose()
    b.dispose()


def test_expired_delivery_claim_is_taken_over(dsn: str) -> None:
    study = "2.25.8"
    a, b, gen = _two_nodes_a_claimed(dsn, study)
    _complete(a, study, gen)
    (due,) = a.due_deliveries()
    assert b.due_deliveries() == []
    a.dispose()
    time.sleep(1.5)
    (again,) = b.due_deliveries()
    assert again.id == due.id and again.objects == due.objects   # the same object, same SOP UID
    b.delivery_succeeded(again.id)
    assert StudyQueries(b).list_studies()[0]["delivery_status"] == "delivered"
    b.dispose()


def test_claims_dropped_after_an_unrecorded_error_lapse_while_the_node_lives(dsn: str,
                                                                           server: PostgresServer) -> None:
    """The database down just when node a records the end of a claim (a triage failure, a
    delivery sent): a lives on and beats, but no longer renews those claims, so they lapse and
    node b takes them over (a heartbeat renewing all of a's claims kept them for ever)."""
    study, other = "2.25.10", "2.25.11"
    a, b, gen = _two_nodes_a_claimed(dsn, study)                   # a triages study ...
    _receive(a, other, other + ".1")
    claimed = a.claim_due_study(0)
    assert claimed is not None
    _complete(a, other, claimed[1])
    (due,) = a.due_deliveries()                                    # ... and sends other's result
    server.stop()
    with pytest.raises(sqlite3.OperationalError):
        a.fail_study(study, gen, "OSError: spool unreadable", transient=True)
    with pytest.raises(sqlite3.OperationalError):
        a.delivery_succeeded(due.id)
    server.start()
    assert wait_for(lambda: _retry(lambda: nodes.renew(a) is not None), 20, 0.3)   # a beats again
    assert wait_for(lambda: _retry(lambda: b.claim_due_study(0) == (study, gen)), 20, 0.3)
    assert wait_for(lambda: _retry(lambda: [d.id for d in b.due_deliveries()] == [due.id]), 20, 0.3)
    assert a.held("studies") == [] and a.held("deliveries") == []
    a.dispose()
    b.dispose()


def test_database_restart_statements_fail_transiently_then_resume(dsn: str, server: PostgresServer) -> None:
    a = _node(dsn, "node-a")
    _receive(a, "2.25.9", "2.25.9.1")
    server.stop()
    try:
        with pytest.raises(sqlite3.OperationalError) as err:   # the class the worker backs off on
            _receive(a, "2.25.9", "2.25.9.2")
        assert isinstance(err.value, StoreUnavailable)
        with pytest.raises(sqlite3.OperationalError):
            a.claim_due_study(0)
    finally:
        server.start()
    assert wait_for(lambda: _retry(_receive, a, "2.25.9", "2.25.9.2"), 20, 0.5)   # the same store
    assert a.claim_due_study(0) is not None
    assert StudyQueries(a).counts()["instances"] == 2
    a.dispose()


def _store_event(path: Path) -> SimpleNamespace:
    """A C-STORE event with the data set already in a file (as pynetdicom gives it)."""
    hdr = dcmread(path, stop_before_pixels=True)
    peer = SimpleNamespace(ae_title="SCU", address="127.0.0.1", primitive=SimpleNamespace(calling_ae_title="SCU"))
    return SimpleNamespace(assoc=SimpleNamespace(requestor=peer), dataset_path=path, request=SimpleNamespace(
        AffectedSOPInstanceUID=str(hdr.SOPInstanceUID), AffectedSOPClassUID=str(hdr.SOPClassUID)))


def test_c_store_answers_a700_while_the_database_is_down(dsn: str, server: PostgresServer,
                                                         tmp_path: Path) -> None:
    dirs = StateDirs(tmp_path / "state").create()
    store = _node(dsn, "node-a")
    handler = StoreHandler(store, Spool(dirs.spool), Quarantine(dirs.quarantine), AuditLog(dirs.audit_log),
                           "CXRTRIAGE")

    def send(film: Path) -> int:
        received = tmp_path / f"recv-{film.name}"
        shutil.copyfile(film, received)
        return int(handler.on_store(_store_event(received)))

    films = [instance_of_size(tmp_path / f"{i}.dcm", 20_000, seed=i) for i in range(2)]
    server.stop()
    try:
        assert send(films[0]) == 0xA700                # nothing acknowledged that is not durable
    finally:
        server.start()
    assert wait_for(lambda: send(films[0]) == 0, 20, 0.5)   # the sender's retry is stored
    assert send(films[1]) == 0
    assert StudyQueries(store).counts()["instances"] == 2
    store.dispose()


def test_password_is_masked_in_the_logged_dsn() -> None:
    masked = mask_dsn("host=db1 dbname=cxr user=cxr password=s3cret")
    assert "s3cret" not in masked and "***" in masked and "host=db1" in masked
    assert "s3cret" not in mask_dsn("postgresql://cxr:s3cret@db1:5432/cxr")


def test_metrics_name_the_node() -> None:
    from cxr_triage.dicom_node.web.metrics import build_registry, render

    class _Down:
        def stats(self) -> None:
            raise sqlite3.OperationalError("database unavailable")

    text = render(build_registry(_Down(), node_name="triage-a")).decode()  # type: ignore[arg-type]
    assert 'cxr_triage_node_info{node="triage-a"} 1.0' in text and "cxr_triage_store_up 0.0" in text
