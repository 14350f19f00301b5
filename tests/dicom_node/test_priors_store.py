"""The read side the priors stage and the worklist use, on both store engines: a patient's
other results (``StudyQueries.patient_results``: decision, nodule flag, whether the result was
itself escalated, its SR) and the escalation on worklist rows (``list_studies``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.postgres_server import PostgresServer, skip_reason, started_server

from cxr_triage.dicom_node.store.db import StoreOptions
from cxr_triage.dicom_node.store.jobs import InstanceRecord, JobStore, ResultObject
from cxr_triage.dicom_node.store.queries import StudyQueries

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
ESCALATION = {"reason": "prior_suspicious_result", "prior_study_uid": "1.9.1", "prior_study_date": "",
              "prior_sr_uid": "1.9.1.9", "prior_finding": "suspicious"}


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer | None]:
    if skip_reason() is not None:
        yield None
        return
    srv = started_server()
    yield srv
    srv.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path, pg_server: PostgresServer | None) -> JobStore:
    if request.param == "sqlite":
        return JobStore(tmp_path / "queue.sqlite3")
    if pg_server is None:
        pytest.skip(skip_reason() or "no PostgreSQL")
    pg_server.psql("CREATE DATABASE priors")
    return JobStore(Path("/nonexistent/queue.sqlite3"), options=StoreOptions(
        "postgresql", pg_server.dsn.replace("dbname=cxr", "dbname=priors"), "n1", 30.0, connect_timeout_s=2.0))


def _result(store: JobStore, study: str, patient_id: str, decision: str, escalated: bool = False) -> None:
    store.add_instance(InstanceRecord(f"{study}.1", study, f"{study}.2", "1.2.840.10008.5.1.4.1.1.1.1",
                                      "1.2.840.10008.1.2.1", f"/spool/{study}.dcm", 10, "SCU",
                                      time.time() - 60, sha256=study))
    claimed = store.claim_due_study(0.0)
    assert claimed is not None and claimed[0] == study
    sr = ResultObject(f"{study}.9", f"{study}.8", SR_CLASS, f"/results/{study}.dcm")
    store.complete_study(study, claimed[1], decision, 0.1,
                         {"decision": decision, "films": [], "escalation": ESCALATION if escalated else None},
                         [sr], [], nodule_flag=None,
                         identity={"patient_id": patient_id, "patient_name": "Doe^Jane", "accession_number": ""})


def test_patient_results_and_the_worklist_escalation(store: JobStore) -> None:
    _result(store, "1.9.1", "P1", "suspicious")
    _result(store, "1.9.2", "P1", "suspicious", escalated=True)
    _result(store, "1.9.3", "P2", "suspicious")
    _result(store, "1.9.4", "P1", "likely_normal")
    queries = StudyQueries(store)
    rows = {r["study_uid"]: r for r in queries.patient_results("P1", exclude_study_uid="1.9.4")}
    assert set(rows) == {"1.9.1", "1.9.2"}                          # not P2's, not the study itself
    assert (rows["1.9.1"]["escalated"], rows["1.9.2"]["escalated"]) == (False, True)
    assert rows["1.9.1"]["sr_uid"] == "1.9.1.9" and rows["1.9.1"]["sr_class_uid"] == SR_CLASS
    assert rows["1.9.1"]["decision"] == "suspicious" and rows["1.9.1"]["nodule_flag"] is None
    listed = {r["study_uid"]: r["escalation"] for r in queries.list_studies()}
    assert listed == {"1.9.1": None, "1.9.2": ESCALATION, "1.9.3": None, "1.9.4": None}
    record = queries.study("1.9.2")
    assert record is not None and record.result is not None and record.result.escalation is not None
    assert record.result.escalation.prior_sr_uid == "1.9.1.9"
