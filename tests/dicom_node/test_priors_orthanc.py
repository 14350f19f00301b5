"""Prior studies against a real PACS on loopback (issue 26): Orthanc holds a patient's prior
studies, the node's worker asks it by C-FIND (Study Root, study level) and lists them on the
study page and in the API; a prior suspicious result of this node escalates the patient's later
likely-normal film (SR, worklist); another patient with the same name, and the same Patient ID
with another birth date, do not escalate.

In process: the node's own JobStore, TriageWorker (tiny model; films screened so that the
prior is suspicious and the later film likely normal at the model's thresholds) and web app.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.uid import generate_uid
from support.node_peers import ORTHANC, Orthanc, free_port
from support.web_node import add_file, screen_films

from cxr_triage.config import load_config
from cxr_triage.dicom_node.results.sr_reader import read_result_sr
from cxr_triage.dicom_node.store import audit as A
from cxr_triage.dicom_node.store.jobs import OUTBOX, JobStore
from cxr_triage.dicom_node.store.queries import StudyQueries
from cxr_triage.dicom_node.store.spool import Quarantine, Spool, StateDirs
from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom, write_dicom
from cxr_triage.dicom_node.web.app import WebSettings, create_app
from cxr_triage.dicom_node.worker.triage import TriageWorker, load_triager

pytestmark = pytest.mark.skipif(not ORTHANC.exists(), reason="Orthanc is not installed (apt install orthanc)")

TODAY = dt.date.today()


def _day(days_ago: int) -> str:
    return f"{TODAY - dt.timedelta(days=days_ago):%Y%m%d}"


class Site:
    """Orthanc (the PACS) and the node's worker, store and worklist over one state dir."""

    def __init__(self, root: Path, model_path: Path, shared_data: Path, orthanc: Orthanc):
        self.root, self.orthanc = root, orthanc
        self.cfg = load_config(environ={}).replace(
            node={"state_dir": str(root / "state"), "quiet_period_s": 0.0},
            inference={"model_path": str(model_path), "threads": 1},
            priors={"query_destination": orthanc.destination, "query_timeout_s": 20.0})
        self.dirs = StateDirs(root / "state").create()
        self.store = JobStore(self.dirs.queue_db)
        self.spool = Spool(self.dirs.spool)
        triager = load_triager(self.cfg)
        self.worker = TriageWorker(self.cfg, self.store, self.dirs, Quarantine(self.dirs.quarantine),
                                   A.AuditLog(self.dirs.audit_log), triager, destinations=lambda: [OUTBOX])
        self.films = screen_films(triager, shared_data, 1, 1)   # at the tiny model's thresholds
        self.web = TestClient(create_app(StudyQueries(self.store), self.cfg,
                                         settings=WebSettings(state_dir=self.dirs.root)))

    def film(self, kind: str, patient_id: str, name: str, birth: str, study_date: str,
             issuer: str = "") -> Path:
        ds = png_to_dicom(self.films[kind][0], study_uid=generate_uid(), patient_name=name,
                          patient_id=patient_id, accession_number=f"A{generate_uid()[-8:]}")
        ds.PatientBirthDate, ds.StudyDate = birth, study_date
        if issuer:
            ds.IssuerOfPatientID = issuer
        return write_dicom(ds, self.root / f"{ds.StudyInstanceUID}.dcm")

    def triage(self, path: Path) -> str:
        study = add_file(self.store, self.spool, path, received_at=1.0 + len(list(self.root.glob("*.dcm"))))
        while self.worker.run_once():
            pass
        return study

    def to_pacs(self, path: Path) -> None:
        self.orthanc.post("/instances", path.read_bytes())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, model_path: Path, shared_data: Path):
    root = tmp_path_factory.mktemp("priors")
    with Orthanc(root / "orthanc", node_port=free_port()) as orthanc:
        yield Site(root, model_path, shared_data, orthanc)


@pytest.mark.slow
def test_prior_suspicious_result_escalates_and_the_page_lists_the_pacs_priors(site: Site) -> None:
    jane = ("PID-PRIOR-1", "Doe^Jane", "19600102")
    old = site.film("likely_normal", *jane, _day(900), issuer="HOSP")      # only the PACS has it
    prior = site.film("suspicious", *jane, _day(120), issuer="HOSP")
    site.to_pacs(old)
    site.to_pacs(prior)
    prior_uid = site.triage(prior)
    assert StudyQueries(site.store).get_study(prior_uid)["decision"] == "suspicious"

    later = site.film("likely_normal", *jane, _day(0))         # no issuer here: still the same ID
    later_uid = site.triage(later)
    record = StudyQueries(site.store).study(later_uid)
    assert record is not None and record.outcome is not None
    assert record.outcome.decision.value == "suspicious"
    assert record.outcome.score is not None and record.outcome.threshold is not None
    assert record.outcome.score < record.outcome.threshold            # its own call: likely normal
    assert record.result is not None and record.result.escalation is not None
    assert record.result.escalation.prior_study_uid == prior_uid
    by_uid = {p.study_uid: p for p in record.priors}
    assert by_uid[prior_uid].source == "node+pacs"                    # the node's result + C-FIND
    old_uid = str(dcmread(old, stop_before_pixels=True).StudyInstanceUID)
    assert by_uid[old_uid].source == "pacs" and by_uid[old_uid].decision is None
    assert by_uid[old_uid].modalities == ("DX",)

    escalated = {r["study_uid"]: r["escalated"] for r in StudyQueries(site.store).patient_results(jane[0])}
    assert escalated == {prior_uid: False, later_uid: True}          # a later study does not chain on it
    sr = read_result_sr(dcmread(record.sr_path))                      # the SR cites the prior
    assert sr.escalation is not None and sr.escalation.prior_study_uid == prior_uid
    prior_sr = StudyQueries(site.store).study(prior_uid)
    assert prior_sr is not None and prior_sr.result is not None
    assert sr.escalation.prior_sr_uid == prior_sr.result.sr_uid

    api = site.web.get(f"/api/studies/{later_uid}").json()
    assert api["decision"] == "suspicious" and api["escalation"] == "prior_suspicious_result"
    assert {p["study_instance_uid"]: p["source"] for p in api["priors"]} == {
        prior_uid: "node+pacs", old_uid: "pacs"}
    assert [p["cited"] for p in api["priors"] if p["study_instance_uid"] == prior_uid] == [True]
    page = site.web.get(f"/studies/{later_uid}").text
    assert 'id="study-priors"' in page and old_uid in page and prior_uid in page
    assert "prior suspicious result" in page
    rows = site.web.get("/api/studies").json()["studies"]
    assert [r["escalation_text"] for r in rows if r["study_instance_uid"] == later_uid] == [
        "prior suspicious result"]
    assert "prior suspicious result" in site.web.get("/").text

    # the same patient with the issuer named: the C-FIND carries Issuer of Patient ID too
    again = StudyQueries(site.store).study(site.triage(site.film("likely_normal", *jane, _day(0), issuer="HOSP")))
    assert again is not None and again.result is not None and again.result.escalation is not None
    assert {p.study_uid: p.source for p in again.priors if p.study_uid in (prior_uid, old_uid)} == {
        prior_uid: "node+pacs", old_uid: "pacs"}


@pytest.mark.slow
def test_same_name_other_patient_and_a_mismatched_birth_date_do_not_escalate(
        site: Site, caplog: pytest.LogCaptureFixture) -> None:
    jane = ("PID-PRIOR-2", "Roe^Ann", "19500505")
    prior = site.film("suspicious", *jane, _day(30))
    site.to_pacs(prior)
    prior_uid = site.triage(prior)
    assert StudyQueries(site.store).get_study(prior_uid)["decision"] == "suspicious"

    namesake = site.film("likely_normal", "PID-OTHER-3", "Roe^Ann", "19500505", _day(0))
    namesake_uid = site.triage(namesake)
    record = StudyQueries(site.store).study(namesake_uid)
    assert record is not None and record.outcome is not None
    assert record.outcome.decision.value == "likely_normal" and record.priors == ()

    with caplog.at_level(logging.WARNING, logger="cxr_triage.dicom_node.priors.lookup"):
        mismatch_uid = site.triage(site.film("likely_normal", "PID-PRIOR-2", "Roe^Ann", "19700707", _day(0)))
    record = StudyQueries(site.store).study(mismatch_uid)
    assert record is not None and record.outcome is not None
    assert record.outcome.decision.value == "likely_normal" and record.result is not None
    assert record.result.escalation is None and prior_uid not in {p.study_uid for p in record.priors}
    left_out = [r for r in caplog.records if r.getMessage().startswith("prior study left out")]
    assert left_out and all(getattr(r, "prior_study_uid", None) == prior_uid for r in left_out)
    assert {tuple(getattr(r, "differing", ())) for r in left_out} == {("birth_date",)}
    text = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "Roe" not in text and "19700707" not in text and "PID-PRIOR-2" not in text   # no PHI
