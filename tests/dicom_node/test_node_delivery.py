"""Delivery per object: each result object (SR, summary image) is sent and retried on its own;
a destination without Comprehensive 3D SR gets a fallback SR; permanent refusals are reported
and not retried at the back-off rate; a batch goes over one association per destination. The destinations are pynetdicom SCPs started here."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid
from pynetdicom import AE, evt
from support.node_peers import NODE_AET, wait_for
from support.sr_checks import dciodvfy_errors, sc_dciodvfy_errors
from support.store_destination import UNCOMPRESSED, StoreDestination

from cxr_triage.config import load_config
from cxr_triage.contract.sop_classes import COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE
from cxr_triage.dicom_node.delivery.dicom_send import send_c_store
from cxr_triage.dicom_node.delivery.scu import associate
from cxr_triage.dicom_node.results.sr_classes import COMPREHENSIVE_SR, ENHANCED_SR, fallback_uid
from cxr_triage.dicom_node.results.sr_reader import read_result_sr
from cxr_triage.dicom_node.service.node import Node
from cxr_triage.dicom_node.store.audit import read_audit
from cxr_triage.dicom_node.store.jobs import DueDelivery, ResultObject

FILM = "nih_gcp_dx_chest_nofinding"


def _node(tmp_path: Path, model: Path, destination: str, **delivery: object) -> Node:
    cfg = load_config(environ={}).replace(
        node={"host": "127.0.0.1", "port": 0, "state_dir": str(tmp_path / "state"),
              "quiet_period_s": 0.2},
        inference={"model_path": str(model), "threads": 1},
        delivery={"destinations": [destination], "summary_image": True, "retry_initial_s": 0.2,
                  "retry_max_s": 0.4, **delivery},
        web={"enabled": False},
    )
    return Node(cfg).start()


def _states(node: Node, study_uid: str) -> dict[str, str]:
    """{SOP class of the object: its delivery state} of the study's current result."""
    detail = node.queries.get_study(study_uid) or {}
    return {d["sop_class_uid"]: d["state"] for d in detail.get("deliveries", [])}


def _send_until(node: Node, path: Path, states: dict[str, str]) -> str:
    """Send the film; wait until its result's deliveries are in ``states`` (by SOP class)."""
    study_uid = _send(node, path)
    wait_for(lambda: _states(node, study_uid) == states, 90, what=f"deliveries {states}")
    return study_uid


def _send(node: Node, path: Path) -> str:
    ds = dcmread(path)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(str(ds.SOPClassUID))
    assoc = associate(ae, "127.0.0.1", node.port, ae_title=NODE_AET)
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    return str(ds.StudyInstanceUID)


@pytest.mark.parametrize("sr_class", [COMPREHENSIVE_SR, ENHANCED_SR])
def test_destination_without_3d_sr_gets_the_summary_image_and_a_fallback_sr(
        tmp_path: Path, tiny_model: Path, sample_dicoms: dict[str, Path], sr_class: str) -> None:
    with StoreDestination(tmp_path / "pacs", [SECONDARY_CAPTURE, sr_class]) as dest:
        node = _node(tmp_path, tiny_model, dest.destination)
        try:
            study_uid = _send(node, sample_dicoms[FILM])
            wait_for(lambda: node.queries.list_studies()
                     and node.queries.list_studies()[0]["delivery_status"] == "delivered", 90,
                     what="every object delivered")
            detail = node.queries.get_study(study_uid)
        finally:
            node.stop(timeout_s=10)
    received = {str(ds.SOPClassUID): (p, ds) for p in dest.received() for ds in [dcmread(p)]}
    assert set(received) == {SECONDARY_CAPTURE, sr_class}
    sr_path, sr = received[sr_class]
    assert dciodvfy_errors(sr_path) == []
    assert sc_dciodvfy_errors(received[SECONDARY_CAPTURE][0]) == []
    # the fallback is the stored SR under a derived, stable UID, same series and content
    (original,) = [o for o in detail["objects"] if o["sop_class_uid"] == COMPREHENSIVE_3D_SR]
    assert sr.SOPInstanceUID == fallback_uid(original["sop_instance_uid"], sr_class)
    assert sr.SeriesInstanceUID == original["series_uid"] and sr.StudyInstanceUID == study_uid
    parsed = read_result_sr(sr)
    stored = read_result_sr(dcmread(original["path"]))
    assert (parsed.decision, parsed.score, parsed.films[0].score) == (
        stored.decision, stored.score, stored.films[0].score)
    # one delivery per object; the SR's attempt says what it went as; the node knows its output
    deliveries = detail["deliveries"]
    assert sorted(d["sop_class_uid"] for d in deliveries) == sorted([COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE])
    (sr_delivery,) = [d for d in deliveries if d["sop_class_uid"] == COMPREHENSIVE_3D_SR]
    assert "sent as" in sr_delivery["attempt_log"][-1]["detail"]
    assert {o["sop_instance_uid"] for o in detail["objects"]} >= {str(sr.SOPInstanceUID)}
    sent = [e for e in read_audit(node.dirs.audit_log) if e.get("direction") == "sent"]
    assert {e["sop_instance_uid"] for e in sent} >= {str(sr.SOPInstanceUID)}


def test_permanent_refusal_is_reported_and_not_retried_at_the_backoff_rate(
        tmp_path: Path, tiny_model: Path, sample_dicoms: dict[str, Path]) -> None:
    """The summary image is refused for good (0xA900), the SR is refused once for lack of
    resources (0xA700): the SR is retried and delivered, the image is reported refused and
    left alone, and neither waits for the other."""

    def status(ds, attempt: int) -> int:
        if str(ds.SOPClassUID) == SECONDARY_CAPTURE:
            return 0xA900
        return 0xA700 if attempt == 1 else 0x0000

    with StoreDestination(tmp_path / "pacs", [SECONDARY_CAPTURE, COMPREHENSIVE_3D_SR],
                          status=status) as dest:
        node = _node(tmp_path, tiny_model, dest.destination)
        try:
            study_uid = _send_until(node, sample_dicoms[FILM], {COMPREHENSIVE_3D_SR: "delivered",
                                                                 SECONDARY_CAPTURE: "refused"})
            time.sleep(2.0)            # 5+ back-off periods: a transient failure would retry
            detail = node.queries.get_study(study_uid)
            failures = node.queries.delivery_failures()
        finally:
            node.stop(timeout_s=10)
    by_class = {d["sop_class_uid"]: d for d in detail["deliveries"]}
    sr, sc = by_class[COMPREHENSIVE_3D_SR], by_class[SECONDARY_CAPTURE]
    assert (sr["state"], sr["attempts"]) == ("delivered", 2)
    assert "0xA700" in sr["attempt_log"][0]["detail"]
    assert (sc["state"], sc["attempts"]) == ("refused", 1)
    assert "0xA900" in sc["last_error"] and "Does Not Match" in sc["last_error"]
    assert sc["next_attempt_at"] - sc["attempt_log"][0]["at"] >= 3000   # refused_retry_s
    assert [(f["state"], f["sop_class_uid"]) for f in failures] == [("refused", SECONDARY_CAPTURE)]
    assert [code for cls, _, code in dest.answers if cls == SECONDARY_CAPTURE] == [0xA900]
    assert [p.name for p in dest.received()] == [f"{sr['sop_instance_uid']}.dcm"]


def test_destination_accepting_no_sr_class_refuses_only_the_sr(
        tmp_path: Path, tiny_model: Path, sample_dicoms: dict[str, Path]) -> None:
    with StoreDestination(tmp_path / "pacs", [SECONDARY_CAPTURE]) as dest:
        node = _node(tmp_path, tiny_model, dest.destination)
        try:
            study_uid = _send(node, sample_dicoms[FILM])
            wait_for(lambda: _states(node, study_uid) == {COMPREHENSIVE_3D_SR: "refused",
                                                          SECONDARY_CAPTURE: "delivered"}, 90,
                     what="the image delivered, the SR refused")
            detail = node.queries.get_study(study_uid)
        finally:
            node.stop(timeout_s=10)
    by_class = {d["sop_class_uid"]: d for d in detail["deliveries"]}
    assert by_class[SECONDARY_CAPTURE]["state"] == "delivered"
    sr = by_class[COMPREHENSIVE_3D_SR]
    assert sr["state"] == "refused" and "accepts no Comprehensive 3D SR" in sr["last_error"]
    assert [str(ds.SOPClassUID) for ds in dest.received_datasets()] == [SECONDARY_CAPTURE]


@pytest.mark.parametrize("accepts_jpeg_ls", [True, False])
def test_compressed_summary_image_goes_compressed_or_decompressed(
        tmp_path: Path, tiny_model: Path, sample_dicoms: dict[str, Path], accepts_jpeg_ls: bool) -> None:
    """The summary image is stored as lossless JPEG-LS; a destination that takes JPEG-LS gets
    those bytes, another gets the same pixels uncompressed."""
    syntaxes = [JPEGLSLossless, *UNCOMPRESSED] if accepts_jpeg_ls else UNCOMPRESSED
    with StoreDestination(tmp_path / "pacs", [SECONDARY_CAPTURE, COMPREHENSIVE_3D_SR],
                          transfer_syntaxes=syntaxes) as dest:
        node = _node(tmp_path, tiny_model, dest.destination)
        try:
            study_uid = _send(node, sample_dicoms[FILM])
            wait_for(lambda: node.queries.list_studies()
                     and node.queries.list_studies()[0]["delivery_status"] == "delivered", 90)
            detail = node.queries.get_study(study_uid)
        finally:
            node.stop(timeout_s=10)
    (stored,) = [dcmread(o["path"]) for o in detail["objects"] if o["sop_class_uid"] == SECONDARY_CAPTURE]
    assert stored.file_meta.TransferSyntaxUID == JPEGLSLossless
    (got,) = [ds for ds in dest.received_datasets() if ds.SOPClassUID == SECONDARY_CAPTURE]
    assert got.file_meta.TransferSyntaxUID == (JPEGLSLossless if accepts_jpeg_ls else ExplicitVRLittleEndian)
    assert np.array_equal(got.pixel_array, stored.pixel_array)
    assert got.SOPInstanceUID == stored.SOPInstanceUID


def test_a_batch_goes_over_one_association_per_destination(
        tmp_path: Path, tiny_model: Path, sample_dicoms: dict[str, Path]) -> None:
    """Everything due to one destination in a deliverer run (here two studies' SR and summary
    image) goes over one association, the fallback SR class negotiated in it; each object
    still gets its own outcome."""
    node = _node(tmp_path, tiny_model, "", destinations=[])           # results to the outbox
    try:
        other = dcmread(sample_dicoms[FILM])                          # the film in a second study
        other.StudyInstanceUID, other.SeriesInstanceUID = generate_uid(), generate_uid()
        other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        other.save_as(tmp_path / "other.dcm")
        studies = [_send(node, path) for path in (sample_dicoms[FILM], tmp_path / "other.dcm")]
        assert node.wait_idle(90)
        objects = [(uid, o) for uid in studies for o in node.queries.get_study(uid)["objects"]]
    finally:
        node.stop(timeout_s=10)
    batch = [DueDelivery(i, 1, uid, "", 0, 0.0, (ResultObject(o["sop_instance_uid"], o["series_uid"],
                                                              o["sop_class_uid"], o["path"]),))
             for i, (uid, o) in enumerate(objects)]
    assert sorted(o["sop_class_uid"] for _, o in objects) == sorted([COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE] * 2)
    associations: list[object] = []
    with StoreDestination(tmp_path / "pacs", [SECONDARY_CAPTURE, COMPREHENSIVE_SR]) as dest:
        dest._server.bind(evt.EVT_ACCEPTED, lambda event: associations.append(event.assoc))
        outcomes = send_c_store(batch, dest.destination, "CXRTRIAGE", timeout_s=30)
    assert len(associations) == 1
    assert [outcomes[item.id].error for item in batch] == [None] * 4
    assert sorted(outcomes[item.id].detail for item in batch
                  if item.objects[0].sop_class_uid == COMPREHENSIVE_3D_SR) == ["sent as Comprehensive SR"] * 2
    assert sorted(str(ds.SOPClassUID) for ds in dest.received_datasets()) == sorted(
        [COMPREHENSIVE_SR, SECONDARY_CAPTURE] * 2)


def test_sr_is_sent_before_the_summary_image_is_made_over_one_association(
        tmp_path: Path, tiny_model: Path, sample_dicoms: dict[str, Path]) -> None:
    """Issue 21: the SR goes out as soon as the result is committed; the summary image is
    rendered after it was sent and follows over the same (held) association."""
    accepted: list[object] = []
    arrived: dict[str, float] = {}

    def stored(ds: Dataset, attempt: int) -> int:
        arrived.setdefault(str(ds.SOPClassUID), time.time())
        return 0x0000

    with StoreDestination(tmp_path / "pacs", [COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE], status=stored) as dest:
        dest._server.bind(evt.EVT_ACCEPTED, lambda event: accepted.append(event.assoc))
        node = _node(tmp_path, tiny_model, dest.destination)
        try:
            study_uid = _send_until(node, sample_dicoms[FILM], {COMPREHENSIVE_3D_SR: "delivered",
                                                                 SECONDARY_CAPTURE: "delivered"})
            objects = {o["sop_class_uid"]: o for o in node.queries.get_study(study_uid)["objects"]}
        finally:
            node.stop(timeout_s=10)
    assert [a[0] for a in dest.answers] == [COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE]
    assert len(accepted) == 1
    assert arrived[COMPREHENSIVE_3D_SR] <= Path(objects[SECONDARY_CAPTURE]["path"]).stat().st_mtime
