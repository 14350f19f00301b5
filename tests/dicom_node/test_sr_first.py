"""The SR first (issue 21): a result's SR is committed and sent before its summary image is
made; the summary image's deliveries, committed with the SR's, wait (held) until its file
exists; a lane keeps its association open, so both objects still go over one association."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any, Iterator

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from support.postgres_server import PostgresServer, skip_reason, started_server
from support.store_destination import StoreDestination

from cxr_triage.contract.sop_classes import COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE
from cxr_triage.dicom_node.compat import share_supported_contexts
from cxr_triage.dicom_node.delivery.dicom_send import HeldAssociation, expected_contexts, send_c_store
from cxr_triage.dicom_node.store import jobs as Q
from cxr_triage.dicom_node.store.db import StoreOptions
from cxr_triage.dicom_node.store.jobs import DueDelivery, InstanceRecord, JobStore, ResultObject
from cxr_triage.dicom_node.store.queries import StudyQueries
from cxr_triage.dicom_node.worker.result_files import save_result_objects

SR_OBJ = ResultObject("9.1", "9", COMPREHENSIVE_3D_SR, "/r/9.1.dcm")
SC_OBJ = ResultObject("9.2", "8", SECONDARY_CAPTURE, "/r/9.2.dcm")


_DB_IDS = itertools.count()


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    srv = started_server()
    yield srv
    srv.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> JobStore:
    """The job store on SQLite, and on a fresh PostgreSQL database (where one can run)."""
    if request.param == "sqlite":
        return JobStore(tmp_path / "q.sqlite3")
    if skip_reason() is not None:
        pytest.skip(skip_reason() or "")
    server: PostgresServer = request.getfixturevalue("pg_server")
    name = f"later{next(_DB_IDS)}"
    server.psql(f"CREATE DATABASE {name}")
    return JobStore(Path("/nonexistent/queue.sqlite3"), options=StoreOptions(
        "postgresql", server.dsn.replace("dbname=cxr", f"dbname={name}"), "n1", 30.0, connect_timeout_s=2.0))


def _triaged(store: JobStore, later: tuple[str, ...]) -> int:
    store.add_instance(InstanceRecord("1.1", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.1",
                                      "1.2.840.10008.1.2.1", "/spool/1.1.dcm", 10, "SCU", 100.0))
    claimed = store.claim_due_study(0.0, now=150.0)
    assert claimed is not None
    return store.complete_study(claimed[0], claimed[1], "suspicious", 0.8, {}, [SR_OBJ],
                                ["A@h:1", "hl7:RIS@h:2"], now=200.0, later=later)


def _status(store: JobStore) -> str:
    return str(StudyQueries(store).list_studies()[0]["delivery_status"])


def test_later_object_is_held_until_added_then_due(store: JobStore) -> None:
    rid = _triaged(store, later=(SC_OBJ.sop_instance_uid,))
    due = store.due_deliveries(now=200.0)                    # the SR (and the RIS message) only
    assert sorted((d.destination, [o.sop_instance_uid for o in d.objects]) for d in due) == [
        ("A@h:1", ["9.1"]), ("hl7:RIS@h:2", ["9.1"])]
    for d in due:
        store.delivery_succeeded(d.id, now=201.0)
    assert _status(store) == "pending"                       # the summary image is still owed
    store.add_later_objects(rid, [SC_OBJ], (SC_OBJ.sop_instance_uid,), now=202.0)
    (sc,) = store.due_deliveries(now=202.0)                  # due at once, to DICOM only
    assert (sc.destination, sc.objects) == ("A@h:1", (SC_OBJ,))
    store.delivery_succeeded(sc.id, now=203.0)
    assert _status(store) == "delivered"


def test_later_object_not_made_loses_its_deliveries(store: JobStore) -> None:
    rid = _triaged(store, later=("9.2",))
    for d in store.due_deliveries(now=200.0):
        store.delivery_succeeded(d.id, now=201.0)
    store.add_later_objects(rid, [], ("9.2",), now=202.0)    # the rendering failed
    assert _status(store) == "delivered"
    assert store.due_deliveries(now=200.0 + Q.LATER_HOLD_S + 1) == []


def test_node_stopped_before_the_later_object_leaves_a_delivery_without_object(store: JobStore) -> None:
    """After the hold the delivery comes due with no object: the deliverer reports it
    refused (``Deliverer._send``), it is never counted as delivered."""
    _triaged(store, later=("9.2",))
    for d in store.due_deliveries(now=200.0):
        store.delivery_succeeded(d.id, now=201.0)
    assert store.due_deliveries(now=200.0 + Q.LATER_HOLD_S - 1) == []
    (late,) = store.due_deliveries(now=200.0 + Q.LATER_HOLD_S + 1)
    assert late.objects == ()


def _files(tmp_path: Path) -> list[ResultObject]:
    out = []
    for sop_class in (COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", generate_uid()
        ds.file_meta = Dataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out += save_result_objects([ds], tmp_path / "results", "1.2.3")
    return out


def test_held_association_carries_consecutive_batches(tmp_path: Path) -> None:
    """The SR alone proposes no Secondary Capture: its summary image needs a new association,
    which proposes both, so every later batch of either kind goes over it; released, the
    next send associates again, and a send without a lane has its own association."""
    sr, sc = _files(tmp_path)
    accepted: list[Any] = []
    held = HeldAssociation()
    with StoreDestination(tmp_path / "pacs", [COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE]) as dest:
        dest._server.bind(evt.EVT_ACCEPTED, lambda event: accepted.append(event.assoc))

        def send(i: int, obj: ResultObject, kept: HeldAssociation | None) -> int:
            out = send_c_store([DueDelivery(i, 1, "1.2.3", "", 0, 0.0, (obj,))], dest.destination,
                               "CXRTRIAGE", timeout_s=30, held=kept)
            assert out[i].error is None
            return len(accepted)

        assert [send(i, obj, held) for i, obj in enumerate((sr, sc, sr, sc, sr), start=1)] == [1, 2, 2, 2, 2]
        assert held.assoc is not None and held.assoc.is_established      # left open
        assert {COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE} <= set(held.contexts)
        held.release()
        assert held.assoc is None
        assert send(6, sc, None) == 3
        # a lane whose results have summary images proposes their class with the first SR
        expecting = HeldAssociation(expected_contexts(True, "none"))
        assert [send(i, obj, expecting) for i, obj in enumerate((sr, sc), start=7)] == [4, 4]
        expecting.release()
    assert sorted(str(ds.SOPClassUID) for ds in dest.received_datasets()) == sorted(
        [COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE])


def test_shared_supported_contexts_are_not_copied() -> None:
    ae = AE(ae_title="SCP")
    ae.add_supported_context(COMPREHENSIVE_3D_SR)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        share_supported_contexts(server)
        assert copy.deepcopy(server.contexts) is server.contexts
        assert [cx.abstract_syntax for cx in server.contexts] == [COMPREHENSIVE_3D_SR]
    finally:
        server.shutdown()
