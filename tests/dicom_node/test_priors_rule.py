"""The prior-result safety rule and how an escalated result is written: the rule itself
(contract), patient matching, the SR items (dciodvfy, dsrdump, read back), the Pertinent
Other Evidence Sequence and the HL7 OBX."""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

import pytest
from conftest import free_port
from pydicom import Dataset
from pydicom.uid import generate_uid
from support.sr_checks import dciodvfy_errors, dsrdump_tree, make_film, reread, save

from cxr_triage.config import load_config
from cxr_triage.contract.decision import escalate_for_priors
from cxr_triage.contract.model_file import ModelMetadata
from cxr_triage.contract.patient import PatientKey
from cxr_triage.contract.result import (
    Decision,
    EscalationReason,
    FilmResult,
    PriorStudy,
    StudyResult,
    aggregate_study,
)
from cxr_triage.contract.sop_classes import COMPREHENSIVE_3D_SR
from cxr_triage.dicom_node.delivery.hl7 import build_oru
from cxr_triage.dicom_node.priors.cfind import PriorQueryError, answers_of, study_query
from cxr_triage.dicom_node.priors.lookup import PriorLookup
from cxr_triage.dicom_node.results import sr_codes
from cxr_triage.dicom_node.results.sr import build_result_sr
from cxr_triage.dicom_node.results.sr_classes import COMPREHENSIVE_SR, ENHANCED_SR, as_sr_class
from cxr_triage.dicom_node.results.sr_plain import sr_summary
from cxr_triage.dicom_node.results.sr_reader import read_result_sr

D = Decision
ON = dt.date(2026, 6, 1)


def prior(days_before: int, decision: Decision | None = D.SUSPICIOUS, nodule: bool | None = None,
          uid: str = "1.2.3.1") -> PriorStudy:
    return PriorStudy(study_uid=uid, source="node", study_date=f"{ON - dt.timedelta(days=days_before):%Y%m%d}",
                      decision=decision, nodule_flag=nodule, sr_uid="1.2.3.9", sr_series_uid="1.2.3.8",
                      sr_class_uid=COMPREHENSIVE_3D_SR)


def normal(uid: str = "1.2.3.2") -> StudyResult:
    return StudyResult(uid, D.LIKELY_NORMAL, 0.1, [])


@pytest.mark.parametrize(("priors", "escalated"), [
    ([prior(30)], True),                                   # suspicious a month ago
    ([prior(365)], True),                                  # on the window's last day
    ([prior(366)], False),                                 # past the window
    ([prior(30, D.LIKELY_NORMAL)], False),                 # a normal prior
    ([prior(30, D.LIKELY_NORMAL, nodule=True)], True),     # a nodule/mass flag
    ([prior(30, None)], False),                            # a PACS study the node never triaged
    ([prior(-3)], False),                                  # "prior" dated after the study
    ([PriorStudy(**{**prior(30).__dict__, "escalated": True})], False),  # itself raised: no chain
    ([], False),
])
def test_the_rule(priors: list[PriorStudy], escalated: bool) -> None:
    out = escalate_for_priors(normal(), priors, on=ON, window_days=365)
    assert (out.decision is D.SUSPICIOUS) is escalated
    assert (out.escalation is not None) is escalated
    assert out.score == 0.1                                   # its own score stays
    if escalated:
        assert out.escalation is not None and out.escalation.reason is EscalationReason.PRIOR_SUSPICIOUS
        assert out.escalation.prior_sr_uid == "1.2.3.9"


def test_the_newest_prior_is_cited_and_other_decisions_stay() -> None:
    out = escalate_for_priors(normal(), [prior(200, uid="1.1"), prior(20, uid="1.2")], on=ON, window_days=365)
    assert out.escalation is not None and out.escalation.prior_study_uid == "1.2"
    for decision in (D.SUSPICIOUS, D.NOT_ASSESSABLE):
        study = StudyResult("1.2.3.2", decision, None, [])
        assert escalate_for_priors(study, [prior(20)], on=ON, window_days=365) is study


def test_patient_matching() -> None:
    me = PatientKey(patient_id="P1", issuer="HOSP", name="Doe^Jane", birth_date="19600101")
    assert me.same_id(PatientKey(patient_id="P1", issuer="HOSP"))
    assert me.same_id(PatientKey(patient_id="P1"))                        # issuer on one side only
    assert not me.same_id(PatientKey(patient_id="P1", issuer="OTHER"))    # another issuer's P1
    assert not me.same_id(PatientKey(patient_id="P2", issuer="HOSP"))
    assert me.mismatches(PatientKey(patient_id="P1", name="DOE^JANE^^")) == []
    assert me.mismatches(PatientKey(patient_id="P1", name="Roe^Jane", birth_date="19700101")) == [
        "name", "birth_date"]


@pytest.fixture(scope="module")
def meta() -> ModelMetadata:
    return ModelMetadata(name="cxr_triage_test_model", version="0.3.1",
                         thresholds={"sens_0.95": 0.41, "sens_0.98": 0.2875, "sens_0.99": 0.19})


def test_an_escalated_result_in_the_sr_and_the_hl7_message(meta: ModelMetadata, tmp_path: Path) -> None:
    study_uid = generate_uid()
    source = make_film(study_uid, generate_uid(), 1)
    op, threshold = meta.threshold()
    film = FilmResult(D.LIKELY_NORMAL, sop_instance_uid=str(source.SOPInstanceUID),
                      series_instance_uid=str(source.SeriesInstanceUID), study_instance_uid=study_uid,
                      sop_class_uid=str(source.SOPClassUID), score=0.05, threshold=threshold,
                      operating_point=op, model_name=meta.name, model_version=meta.version)
    study = aggregate_study(study_uid, [film])
    earlier = prior(40)
    study = escalate_for_priors(StudyResult(**{**study.__dict__, "priors": [earlier]}), [earlier],
                                on=ON, window_days=365)
    path = save(build_result_sr(study, [source], meta), tmp_path / "sr.dcm")
    assert dciodvfy_errors(path) == []
    tree = dsrdump_tree(path)
    assert "Prior suspicious result" in tree and "Prior AI triage result used" in tree

    back = reread(path)
    (cited,) = back.PertinentOtherEvidenceSequence
    assert cited.StudyInstanceUID == earlier.study_uid
    assert cited.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.2.3.9"
    parsed = read_result_sr(back)
    assert parsed.decision is D.SUSPICIOUS and parsed.score == 0.05
    assert parsed.escalation == study.escalation
    assert parsed.films[0].decision is D.LIKELY_NORMAL            # the film's own call stays

    said = " ".join(sr_summary(back))                         # the study page's plain words
    assert "Raised to suspicious: prior suspicious result" in said and "1.2.3.9" in said
    for fallback in (COMPREHENSIVE_SR, ENHANCED_SR):           # a PACS without 3D SR gets the same
        assert read_result_sr(as_sr_class(back, fallback)).escalation == study.escalation

    message = build_oru(back, control_id="C1", sending_application="CXRTRIAGE", receiving_application="RIS")
    obx = [s for s in message.split("\r") if s.startswith("OBX|")]
    reason = sr_codes.ESCALATION_CODES[EscalationReason.PRIOR_SUSPICIOUS]
    assert any(f"{reason.value}^{reason.meaning}^99CXRT" in s and s.split("|")[8] == "A" for s in obx)
    assert any(sr_codes.PRIOR_RESULT_SR.value in s and "1.2.3.9" in s for s in obx)
    assert "TQ1|1||||||||A^ASAP^HL70027" in message


class _OneSuspiciousResult:
    """The store's read side with one earlier suspicious result of the patient (no SR file)."""

    def patient_results(self, patient_id: str, exclude_study_uid: str = "") -> list[dict]:
        return [{"study_uid": "1.2.3.1", "patient_id": patient_id, "patient_name": "Doe^Jane",
                 "accession_number": "A1", "decision": "suspicious", "nodule_flag": None,
                 "triaged_at": time.time() - 86400, "sr_uid": None, "sr_series_uid": None,
                 "sr_class_uid": None, "sr_path": None}]


def test_a_pacs_that_cannot_be_asked_leaves_the_node_results(caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(environ={}).replace(
        priors={"query_destination": f"PACS@127.0.0.1:{free_port()}", "query_timeout_s": 2.0})
    lookup = PriorLookup(cfg, _OneSuspiciousResult())  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        found = lookup.find("1.2.3.2", PatientKey(patient_id="P1", name="Doe^Jane"), dt.date.today())
    assert [(p.study_uid, p.source, p.decision) for p in found] == [("1.2.3.1", "node", D.SUSPICIOUS)]
    assert found[0].study_date == f"{dt.date.today() - dt.timedelta(days=1):%Y%m%d}"  # triaged_at
    assert "prior studies: PACS not asked" in caplog.text
    with caplog.at_level(logging.WARNING):
        other = lookup.find("1.2.3.2", PatientKey(patient_id="P1", name="Roe^Ann"), dt.date.today())
    assert other == [] and "prior study left out" in caplog.text


def _status(code: int | None) -> Dataset:
    ds = Dataset()
    if code is not None:
        ds.Status = code
    return ds


def test_c_find_identifier_and_answers() -> None:
    query = study_query(PatientKey(patient_id="P1", issuer="HOSP"), dt.date(2021, 6, 1))
    assert (query.QueryRetrieveLevel, query.PatientID, query.IssuerOfPatientID, query.StudyDate) == (
        "STUDY", "P1", "HOSP", "20210601-")
    assert "IssuerOfPatientID" not in study_query(PatientKey(patient_id="P1"), dt.date(2021, 6, 1))
    found = Dataset()
    found.StudyInstanceUID, found.PatientID, found.ModalitiesInStudy = "1.1", "P1", ["CR", "SR"]
    (study,) = answers_of([(_status(0xFF00), found), (_status(0x0000), None)])
    assert study.study_uid == "1.1" and study.modalities == ("CR", "SR") and study.patient.patient_id == "P1"
    with pytest.raises(PriorQueryError, match="0xA700"):
        answers_of([(_status(0xFF00), found), (_status(0xA700), None)])
    with pytest.raises(PriorQueryError, match="no response"):
        answers_of([(_status(None), None)])
    with pytest.raises(PriorQueryError, match="without a final status"):
        answers_of([(_status(0xFF00), found)])
