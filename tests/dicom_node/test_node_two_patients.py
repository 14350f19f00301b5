"""One Study Instance UID, two patients (issue 23, class 1): a result never mixes patients.

Films of two patients under one Study Instance UID, sent by dcmtk's storescu in one
association (and, later, more of either patient in another association): the study's result
and its SR hold only the first patient's films; every other patient's instance is acknowledged,
held for reconciliation in the quarantine (never triaged) and audited with patient
fingerprints; no log line and no audit record names a patient or a Patient ID.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from support.node_peers import StoreSCP, free_port, storescu, wait_for, write_node_config

from cxr_triage.config import load_config
from cxr_triage.contract.patient import PatientKey
from cxr_triage.dicom_node.receive.patients import fingerprint
from cxr_triage.dicom_node.service.node import Node
from cxr_triage.dicom_node.store.audit import read_audit

FILMS = ("nih_gcp_dx_chest_nofinding", "siim_cr_chest_pa")
NAMES = {"P1": "Firstpatient^Ada", "P2": "Secondpatient^Bob", "P3": "Thirdpatient^Cy"}


def _film(src: Path, out: Path, study_uid: str, pid: str, issuer: str = "") -> tuple[Path, str]:
    ds = dcmread(src)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName = pid, NAMES[pid]
    if issuer:
        ds.IssuerOfPatientID = issuer
    elif "IssuerOfPatientID" in ds:
        del ds.IssuerOfPatientID
    path = out / f"{pid}-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID)


def _current_films(db: Path, study_uid: str) -> set[str]:
    con = sqlite3.connect(db)
    try:
        (doc,) = con.execute("SELECT r.result_json FROM studies s JOIN results r ON r.id=s.result_id"
                             " WHERE s.study_uid=?", (study_uid,)).fetchone()
    finally:
        con.close()
    return {f["sop_instance_uid"] for f in json.loads(doc)["films"]}


def test_a_second_patient_under_one_study_uid_is_held_not_mixed(
        tmp_path: Path, tiny_model: Path, sample_dicoms: dict[str, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    study_uid = generate_uid()
    src = [sample_dicoms[name] for name in FILMS]
    out = tmp_path / "films"
    out.mkdir()
    p1a, p1a_uid = _film(src[0], out, study_uid, "P1")
    p2, p2_uid = _film(src[0], out, study_uid, "P2")            # same syntax: one association
    p1b, p1b_uid = _film(src[1], out, study_uid, "P1", issuer="HOSP")  # same patient, issuer named
    p3, p3_uid = _film(src[1], out, study_uid, "P3")
    with StoreSCP(tmp_path / "pacs", free_port()) as pacs:
        node = Node(load_config(write_node_config(tmp_path / "node.toml", 0, tiny_model,
                                                  node={"quiet_period_s": 0.5},
                                                  delivery={"destinations": [pacs.destination]}))).start()
        try:
            assert storescu([p1a, p2], node.port).returncode == 0          # one association
            wait_for(lambda: node.wait_idle(1) and node.queries.list_studies(), 90, what="the result")
            first = _current_films(node.dirs.queue_db, study_uid)
            assert storescu([p1b, p3], node.port).returncode == 0          # later, another association
            wait_for(lambda: _current_films(node.dirs.queue_db, study_uid) != first
                     and node.wait_idle(1), 90, what="the amended result")
            second = _current_films(node.dirs.queue_db, study_uid)
            audit = read_audit(node.dirs.audit_log)
            held = [json.loads(p.read_text()) for p in node.dirs.quarantine.glob("*.json")]
        finally:
            node.stop(timeout_s=10)
        srs = [ds for ds in pacs.received() if ds.Modality == "SR"]

    # the result: the first patient's films only, first one, then both of them
    assert first == {p1a_uid}
    assert second == {p1a_uid, p1b_uid}
    assert srs and all(str(sr.PatientID) == "P1" for sr in srs)
    evidence = {str(ref.ReferencedSOPInstanceUID) for sr in srs
                for st in sr.CurrentRequestedProcedureEvidenceSequence
                for se in st.ReferencedSeriesSequence for ref in se.ReferencedSOPSequence}
    assert evidence == {p1a_uid, p1b_uid}
    # the others: held in the quarantine with the reason, acknowledged, audited by fingerprint
    assert {h["sop_instance_uid"] for h in held} == {p2_uid, p3_uid}
    assert all(h["reason"].startswith("held for reconciliation") for h in held)
    conflicts = [e for e in audit if e.get("conflict") == "patient_conflict"]
    assert {e["sop_instance_uid"] for e in conflicts} == {p2_uid, p3_uid}
    assert {e["patient_fingerprint"] for e in conflicts} == {fingerprint(PatientKey(patient_id=p))
                                                              for p in ("P2", "P3")}
    assert {e["study_patient_fingerprint"] for e in conflicts} == {fingerprint(PatientKey(patient_id="P1"))}
    # IDs, not names: no patient name or Patient ID in the audit or the log records
    text = json.dumps(audit) + "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    leaked = [v for pid, name in NAMES.items() for v in (name.split("^")[0], f'"{pid}"') if v in text]
    assert leaked == []


def test_the_worker_never_reads_two_patients_into_one_result(tmp_path: Path,
                                                            sample_dicoms: dict[str, Path]) -> None:
    """Files already in the spool (stored before the receiving check, or imported at start):
    the read stage keeps the first-received instance's patient only."""
    from cxr_triage.dicom_node.store.jobs import InstanceRecord
    from cxr_triage.dicom_node.worker.stages import StudyJob, read_instances

    study_uid = generate_uid()
    src = sample_dicoms[FILMS[0]]
    films = [(_film(src, tmp_path, study_uid, pid, issuer), at)
             for pid, issuer, at in (("P2", "", 2.0), ("P1", "", 1.0), ("P1", "HOSP", 3.0), ("P3", "", 4.0))]
    records = [InstanceRecord(uid, study_uid, None, None, None, str(path), None, None, at)
               for (path, uid), at in films]
    job = StudyJob(study_uid, records)
    read_instances(None, job)  # type: ignore[arg-type]  # the read stage needs no context
    assert {inst.sop_instance_uid for inst, _, _ in job.read} == {films[1][0][1], films[2][0][1]}
