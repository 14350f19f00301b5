"""HL7 v2 to the RIS: one ORU^R01 per study result over MLLP, received by a real MLLP
listener (hl7apy's MLLPServer) started here; retried like DICOM delivery; an amended result
goes as a correction (OBR-25 / OBX-11 = C); no PHI in logs or the audit trail."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from support.mllp_listener import MllpListener
from support.node_peers import c_store, wait_for

from cxr_triage.config import ConfigError, load_config
from cxr_triage.dicom_node.delivery.hl7 import build_oru
from cxr_triage.dicom_node.results.sr_reader import read_result_sr
from cxr_triage.dicom_node.service.node import Node
from cxr_triage.dicom_node.store.audit import read_audit

FILM = "nih_gcp_dx_chest_nofinding"
NAME, PATIENT_ID, ACCESSION = "Quokkafield^Wilhelmina", "PHI-98765", "ACC20240001"


def _film(sample: Path) -> Dataset:
    ds = dcmread(sample)
    ds.PatientName, ds.PatientID, ds.AccessionNumber = NAME, PATIENT_ID, ACCESSION
    return ds


def _node(tmp_path: Path, model: Path, ris: MllpListener) -> Node:
    cfg = load_config(environ={}).replace(
        node={"host": "127.0.0.1", "port": 0, "state_dir": str(tmp_path / "state"), "quiet_period_s": 0.2},
        inference={"model_path": str(model), "threads": 1},
        delivery={"hl7_destinations": [ris.destination], "hl7_sending_facility": "RADIOLOGY",
                  "summary_image": False, "retry_initial_s": 0.2, "retry_max_s": 0.4},
        web={"enabled": False})
    return Node(cfg).start()


def _hl7_deliveries(node: Node, study_uid: str) -> list[dict]:
    return [d for d in node.queries.get_study(study_uid)["deliveries"] if d["destination"].startswith("hl7:")]


def _segments(er7: str) -> dict[str, list[list[str]]]:
    """{segment id: [fields of each occurrence]} of an ER7 message (fields split on |)."""
    out: dict[str, list[list[str]]] = {}
    for line in er7.replace("\n", "\r").split("\r"):
        if line:
            out.setdefault(line[:3], []).append(line.split("|"))
    return out


def test_one_oru_per_result_retried_then_a_correction_for_the_amended_result(
        tmp_path: Path, tiny_model: Path, sample_dicoms: dict[str, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    first = _film(sample_dicoms[FILM])
    later = _film(sample_dicoms[FILM])
    later.SOPInstanceUID = generate_uid()
    study_uid = str(first.StudyInstanceUID)
    # the RIS is busy once (AR: retried with back-off), then accepts
    with MllpListener(ack_code=lambda n: "AR" if n == 1 else "AA") as ris:
        node = _node(tmp_path, tiny_model, ris)
        try:
            c_store(node.port, first)
            wait_for(lambda: node.queries.list_studies()
                     and [d["state"] for d in _hl7_deliveries(node, study_uid)] == ["delivered"], 90,
                     what="the ORU acknowledged")
            (d1,) = _hl7_deliveries(node, study_uid)
            first_sr = read_result_sr(dcmread(next(
                o["path"] for o in node.queries.get_study(study_uid)["objects"])))
            c_store(node.port, later)
            wait_for(lambda: node.queries.list_studies()[0]["amended"]
                     and [d["state"] for d in _hl7_deliveries(node, study_uid)] == ["delivered"], 90,
                     what="the correction acknowledged")
            study = node.queries.get_study(study_uid)
        finally:
            node.stop(timeout_s=10)
    assert ris.answers == ["AR", "AA", "AA"]
    assert d1["attempts"] == 2 and "0xA" not in (d1["attempt_log"][0]["detail"] or "")
    assert "AR" in d1["attempt_log"][0]["detail"] and d1["attempt_log"][1]["ok"] == 1
    busy, oru, correction = (_segments(m) for m in ris.messages)
    # a retry is the same message: same control ID
    assert busy["MSH"][0][9] == oru["MSH"][0][9]
    assert correction["MSH"][0][9] != oru["MSH"][0][9]
    # -- the first result: preliminary, with the accession, patient, study, decision, scores, model
    msh, pid, obr = oru["MSH"][0], oru["PID"][0], oru["OBR"][0]
    assert (msh[2], msh[3], msh[4], msh[8], msh[11]) == ("CXRTRIAGE", "RADIOLOGY", "RIS", "ORU^R01^ORU_R01", "2.5")
    assert pid[3].split("^")[0] == PATIENT_ID and pid[5] == NAME
    assert obr[2] == obr[3] == ACCESSION and oru["ORC"][0][3] == ACCESSION
    assert obr[25] == "P" and {obx[11] for obx in oru["OBX"]} == {"P"}
    obx = {o[3].split("^")[0]: o for o in oru["OBX"]}
    decision_code = obx["CXRT001"][5].split("^")[0]
    assert decision_code == {"suspicious": "CXRT011", "likely_normal": "CXRT010",
                             "not_assessable": "CXRT012"}[first_sr.decision.value]
    assert obx["CXRT001"][8] == {"suspicious": "A", "likely_normal": "N"}.get(first_sr.decision.value, "")
    assert float(obx["CXRT002"][5]) == pytest.approx(first_sr.score, abs=1e-4)
    assert float(obx["CXRT003"][5]) == pytest.approx(first_sr.threshold, abs=1e-4)
    assert obx["CXRT030"][5] == {"suspicious": "1", "not_assessable": "2", "likely_normal": "3"}[
        first_sr.decision.value]
    assert obx["111003"][5] == first_sr.model_version and obx["111001"][5] == first_sr.model_name
    assert obx["110180"][5] == study_uid and obx["CXRT031"][5] == first_sr.sr_sop_instance_uid
    priority = oru["TQ1"][0][9].split("^")[0]
    assert priority == ("A" if first_sr.decision.value == "suspicious" else "R")
    assert oru["NTE"][0][3].endswith("not for diagnosis")
    # hl7apy reads the message back as a valid ORU^R01
    parsed = ris.parsed()[1]
    assert parsed.name == "ORU_R01" and parsed.validate()
    # -- the amended result: a correction (C) naming the amended SR
    assert correction["OBR"][0][25] == "C" and {o[11] for o in correction["OBX"]} == {"C"}
    (amended_sr,) = [o for o in study["objects"] if o["sop_class_uid"].endswith(".88.34")]
    assert {o[3].split("^")[0]: o for o in correction["OBX"]}["CXRT031"][5] == amended_sr["sop_instance_uid"]
    # -- ids only in logs and audit: no patient name, ID or accession number
    # every record with its extra fields (what the JSON log lines carry), and the audit trail
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records) + node.dirs.audit_log.read_text()
    assert "ORU" in logged or "delivered" in logged
    for phi in ("Quokkafield", "Wilhelmina", PATIENT_ID, ACCESSION):
        assert phi not in logged
    exports = [e for e in read_audit(node.dirs.audit_log) if e["event_id"] == "110106"]
    assert [e["outcome"] for e in exports] == [4, 0, 0] and all(e["study_uid"] == study_uid for e in exports)


def test_an_application_error_is_a_permanent_refusal(
        tmp_path: Path, tiny_model: Path, sample_dicoms: dict[str, Path]) -> None:
    with MllpListener(ack_code=lambda n: "AE") as ris:
        node = _node(tmp_path, tiny_model, ris)
        try:
            first = _film(sample_dicoms[FILM])
            c_store(node.port, first)
            wait_for(lambda: node.queries.list_studies()
                     and node.queries.list_studies()[0]["delivery_status"] == "refused", 90)
            time.sleep(1.5)                                # several back-off periods
            (d,) = _hl7_deliveries(node, str(first.StudyInstanceUID))
        finally:
            node.stop(timeout_s=10)
    assert (d["state"], d["attempts"]) == ("refused", 1) and "AE" in d["last_error"]
    assert ris.answers == ["AE"]


def test_no_ris_no_message_and_bad_destinations_are_refused_at_start() -> None:
    assert load_config(environ={}).delivery.hl7_destinations == []
    with pytest.raises(ConfigError, match="hl7_destinations"):
        load_config(environ={"CXR_TRIAGE__DELIVERY__HL7_DESTINATIONS": "RIS@nohost"})


def test_patient_values_with_hl7_delimiters_are_escaped(tmp_path: Path) -> None:
    """Names and ids with | ^ & ~ \\ are escaped by hl7apy, never split into fields."""
    from pydicom.uid import generate_uid as uid
    from support.sr_checks import make_film

    from cxr_triage.contract.model_file import ModelMetadata
    from cxr_triage.contract.result import Decision, FilmResult, aggregate_study
    from cxr_triage.dicom_node.results.sr import build_result_sr

    meta = ModelMetadata(name="m", version="1.2", thresholds={"sens_0.98": 0.3})
    src = make_film(uid(), uid(), 1)
    src.PatientName, src.PatientID, src.AccessionNumber = "O'Brien|X^Ann", "ID^1&2", "A~B"
    film = FilmResult(Decision.SUSPICIOUS, sop_instance_uid=str(src.SOPInstanceUID),
                      series_instance_uid=str(src.SeriesInstanceUID), study_instance_uid=str(src.StudyInstanceUID),
                      sop_class_uid=str(src.SOPClassUID), score=0.9, threshold=0.3, operating_point="sens_0.98",
                      model_name="m", model_version="1.2")
    sr = build_result_sr(aggregate_study(str(src.StudyInstanceUID), [film]), [src], meta)
    seg = _segments(build_oru(sr, control_id="C1", sending_application="CXRTRIAGE", receiving_application="RIS"))
    pid = seg["PID"][0]
    assert len(pid) == 9                                          # no field split by the values
    assert pid[3].split("^")[0] == "ID\\S\\1\\T\\2" and pid[5] == "O'Brien\\F\\X^Ann"
    assert seg["OBR"][0][3] == "A\\R\\B"


@pytest.mark.parametrize("shown", [False, True])
def test_nodule_mass_score_without_flag_and_the_point_in_words(shown: bool) -> None:
    """Issue 22: from a model whose nodule/mass flag is not shown, the ORU carries the score
    (NM CXRT020) with no flag and no threshold OBX, and says why (ST CXRT023); from one whose
    flag is shown, the flag, threshold and its point in words."""
    from pydicom.uid import generate_uid as uid
    from support.sr_checks import make_film

    from cxr_triage.contract.model_file import ModelMetadata
    from cxr_triage.contract.nodule_point import nodule_point
    from cxr_triage.contract.result import Decision, FilmResult, aggregate_study
    from cxr_triage.dicom_node.results.sr import build_result_sr

    meta = ModelMetadata(name="m", version="1.2", thresholds={"sens_0.98": 0.3},
                         nodule_thresholds={"normals_0.15": 0.0874}, nodule_default_operating_point="normals_0.15",
                         nodule_flag_shown=shown, validation_metrics={"nodule": {"flag_rate_points": {
                             "normals_0.15": {"normals_flagged": 0.149, "sensitivity": 0.72 if shown else 0.42}}}})
    point = nodule_point(meta)
    assert point is not None
    src = make_film(uid(), uid(), 1)
    film = FilmResult(Decision.LIKELY_NORMAL, sop_instance_uid=str(src.SOPInstanceUID),
                      series_instance_uid=str(src.SeriesInstanceUID), study_instance_uid=str(src.StudyInstanceUID),
                      sop_class_uid=str(src.SOPClassUID), score=0.1, threshold=0.3, operating_point="sens_0.98",
                      nodule_score=0.0815, nodule_threshold=0.0874, nodule_flag=False if shown else None,
                      nodule_point=point.statement(), model_name="m", model_version="1.2")
    sr = build_result_sr(aggregate_study(str(src.StudyInstanceUID), [film]), [src], meta)
    obx = {o[3].split("^")[0]: o for o in _segments(build_oru(
        sr, control_id="C1", sending_application="CXRTRIAGE", receiving_application="RIS"))["OBX"]}
    assert obx["CXRT020"][5] == "0.0815"
    assert ("CXRT022" in obx, "CXRT021" in obx) == (shown, shown)
    words = obx["CXRT023"][5]
    if shown:
        assert words.startswith("flag at operating point normals_0.15: flagged when score >= 0.0874 (15% ")
        assert words.endswith("it caught 72% of validation Nodule/Mass films")
    else:
        assert words == ("score only, no flag: at its operating point normals_0.15 (15% of validation normals at "
                         "or above it) it caught 42% of validation Nodule/Mass films, below the 60% a flag needs")
