"""Amended results: more images of a study after its result was sent give a result that
visibly replaces the first — same SR series, next Instance Number, Predecessor Documents
Sequence naming the replaced SR, a Completion Flag Description that says it supersedes — and
the worklist shows the latest. Also through a destination that only takes Comprehensive SR."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from support.node_peers import c_store, wait_for
from support.sr_checks import dciodvfy_errors, sc_dciodvfy_errors
from support.store_destination import StoreDestination

from cxr_triage.config import load_config
from cxr_triage.contract.sop_classes import COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE
from cxr_triage.dicom_node.results.sr import AMENDED_COMPLETION
from cxr_triage.dicom_node.results.sr_classes import COMPREHENSIVE_SR, fallback_uid
from cxr_triage.dicom_node.results.sr_reader import read_result_sr
from cxr_triage.dicom_node.service.node import Node

FILM = "nih_gcp_dx_chest_nofinding"


def _predecessors(sr: Dataset) -> list[tuple[str, str, str, str]]:
    """(study, series, SOP class, SOP instance) of each Predecessor Documents Sequence item."""
    return [(str(st.StudyInstanceUID), str(se.SeriesInstanceUID), str(ref.ReferencedSOPClassUID),
             str(ref.ReferencedSOPInstanceUID))
            for st in sr.get("PredecessorDocumentsSequence", [])
            for se in st.ReferencedSeriesSequence for ref in se.ReferencedSOPSequence]


def test_more_images_after_the_result_give_an_amended_result(
        tmp_path: Path, tiny_model: Path, sample_dicoms: dict[str, Path]) -> None:
    first = dcmread(sample_dicoms[FILM])
    later = dcmread(sample_dicoms[FILM])
    later.SOPInstanceUID = generate_uid()           # another image of the same study
    later.InstanceNumber = 2
    study_uid = str(first.StudyInstanceUID)
    with StoreDestination(tmp_path / "pacs", [COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE]) as pacs, \
            StoreDestination(tmp_path / "old_pacs", [COMPREHENSIVE_SR, SECONDARY_CAPTURE],
                             aet="OLDPACS") as old_pacs:
        cfg = load_config(environ={}).replace(
            node={"host": "127.0.0.1", "port": 0, "state_dir": str(tmp_path / "state"),
                  "quiet_period_s": 0.2},
            inference={"model_path": str(tiny_model), "threads": 1},
            delivery={"destinations": [pacs.destination, old_pacs.destination], "summary_image": True},
            web={"enabled": False})
        node = Node(cfg).start()
        try:
            c_store(node.port, first)
            wait_for(lambda: node.queries.list_studies()
                     and node.queries.list_studies()[0]["delivery_status"] == "delivered", 90)
            assert node.queries.list_studies()[0]["amended"] is False
            c_store(node.port, later)
            wait_for(lambda: (s := node.queries.list_studies()[0])["amended"]
                     and s["delivery_status"] == "delivered", 90, what="the amended result delivered")
            study = node.queries.get_study(study_uid)
        finally:
            node.stop(timeout_s=10)

    # -- the PACS with Comprehensive 3D SR: both SRs, one series, 1 then 2, linked
    got = {p: dcmread(p) for p in pacs.received()}
    srs = sorted((ds for ds in got.values() if ds.SOPClassUID == COMPREHENSIVE_3D_SR),
                 key=lambda ds: int(ds.InstanceNumber))
    assert [int(ds.InstanceNumber) for ds in srs] == [1, 2]
    old, new = srs
    assert new.SeriesInstanceUID == old.SeriesInstanceUID and new.StudyInstanceUID == study_uid
    assert _predecessors(new) == [(study_uid, str(old.SeriesInstanceUID), COMPREHENSIVE_3D_SR,
                                   str(old.SOPInstanceUID))]
    assert "PredecessorDocumentsSequence" not in old and "CompletionFlagDescription" not in old
    assert new.CompletionFlagDescription == AMENDED_COMPLETION and "supersedes" in AMENDED_COMPLETION
    assert (new.CompletionFlag, new.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
    assert new.SeriesDescription.startswith("AI triage (amended): ")
    # highdicom reads the amended document; the result round trip stays exact
    assert isinstance(hd.sr.Comprehensive3DSR.from_dataset(new).content, hd.sr.MeasurementReport)
    new_path = next(p for p, ds in got.items() if ds.SOPInstanceUID == new.SOPInstanceUID)
    assert dciodvfy_errors(new_path) == []
    parsed = read_result_sr(new)
    result = study["result"]
    assert parsed.decision.value == result["decision"] == study["decision"]
    assert parsed.score == result["score"]
    assert sorted(g.score for g in parsed.films) == sorted(f["score"] for f in result["films"])
    assert {g.sop_instance_uid for g in parsed.films} == {str(first.SOPInstanceUID), str(later.SOPInstanceUID)}
    # the summary images continue their series: 1 (first result), then 2 and 3
    scs = [ds for ds in got.values() if ds.SOPClassUID == SECONDARY_CAPTURE]
    assert len({str(ds.SeriesInstanceUID) for ds in scs}) == 1
    assert sorted(int(ds.InstanceNumber) for ds in scs) == [1, 2, 3]
    amended_sc = next(p for p, ds in got.items()
                      if ds.SOPClassUID == SECONDARY_CAPTURE and int(ds.InstanceNumber) == 3)
    assert sc_dciodvfy_errors(amended_sc) == []
    assert dcmread(amended_sc).SeriesDescription.startswith("AI triage summary (amended): ")

    # -- the PACS without 3D SR: the fallback of the amended SR names the fallback it received
    fallbacks = sorted((ds for ds in old_pacs.received_datasets() if ds.SOPClassUID == COMPREHENSIVE_SR),
                       key=lambda ds: int(ds.InstanceNumber))
    assert [str(ds.SOPInstanceUID) for ds in fallbacks] == [
        fallback_uid(str(old.SOPInstanceUID), COMPREHENSIVE_SR),
        fallback_uid(str(new.SOPInstanceUID), COMPREHENSIVE_SR)]
    assert _predecessors(fallbacks[1]) == [(study_uid, str(old.SeriesInstanceUID), COMPREHENSIVE_SR,
                                            str(fallbacks[0].SOPInstanceUID))]
    fallback_path = next(p for p in old_pacs.received() if p.stem == str(fallbacks[1].SOPInstanceUID))
    assert dciodvfy_errors(fallback_path) == []

    # -- the store and the worklist: the latest result, marked amended
    assert study["amended"] is True and study["amends_result_id"] is not None
    assert study["result_id"] != study["amends_result_id"]
    assert all(d["state"] == "delivered" for d in study["deliveries"])
