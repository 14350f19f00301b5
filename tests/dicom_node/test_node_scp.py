"""The receiving side, in process: association checks, durable receipt, statuses, quarantine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
    Verification,
)
from support.node_peers import DCMTK, NODE_AET, wait_for

from cxr_triage.config import load_config
from cxr_triage.dicom_node.service.node import Node
from cxr_triage.dicom_node.store.audit import read_audit
from cxr_triage.dicom_node.store.jobs import JobStore
from cxr_triage.dicom_node.store.queries import StudyQueries


@pytest.fixture
def node(tmp_path: Path, tiny_model: Path):
    cfg = load_config(environ={}).replace(
        node={"host": "127.0.0.1", "port": 0, "state_dir": str(tmp_path / "state"),
              "quiet_period_s": 0.3, "allowed_calling_aets": ["GOODSCU"]},
        inference={"model_path": str(tiny_model), "threads": 1},
        delivery={"summary_image": False},
        web={"enabled": False},
    )
    n = Node(cfg).start()
    yield n
    n.stop(timeout_s=10)


def _assoc(port: int, aet: str = "GOODSCU", contexts=None):
    ae = AE(ae_title=aet)
    for cx in contexts or [Verification, SecondaryCaptureImageStorage, DigitalXRayImageStorageForPresentation,
                           ComprehensiveSRStorage, Comprehensive3DSRStorage, CTImageStorage]:
        ae.add_requested_context(cx, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title=NODE_AET)


def _dataset(sop_class: str = SecondaryCaptureImageStorage, study: str | None = None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if study is not False:
        ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.PatientName = "Secret^Person"
    ds.PatientID = "PHI-123"
    return ds


def test_echo_and_association_checks(node: Node) -> None:
    port = str(node.port)
    ok = subprocess.run([str(DCMTK / "echoscu"), "-aet", "GOODSCU", "-aec", NODE_AET, "127.0.0.1", port],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    bad_calling = subprocess.run([str(DCMTK / "echoscu"), "-aet", "STRANGER", "-aec", NODE_AET,
                                  "127.0.0.1", port], capture_output=True, text=True, timeout=30)
    assert bad_calling.returncode != 0 and "Calling AE Title Not Recognized" in bad_calling.stderr
    bad_called = subprocess.run([str(DCMTK / "echoscu"), "-aet", "GOODSCU", "-aec", "OTHER",
                                 "127.0.0.1", port], capture_output=True, text=True, timeout=30)
    assert bad_called.returncode != 0 and "Called AE Title Not Recognized" in bad_called.stderr
    alerts = [e for e in read_audit(node.dirs.audit_log) if e["event_id"] == "110113"]
    assert {a["calling_ae"] for a in alerts} >= {"STRANGER"} and len(alerts) == 2


def test_host_allow_list(tmp_path: Path, tiny_model: Path) -> None:
    cfg = load_config(environ={}).replace(
        node={"host": "127.0.0.1", "port": 0, "state_dir": str(tmp_path / "s"),
              "allowed_hosts": ["10.9.9.9"]},
        inference={"model_path": str(tiny_model)}, web={"enabled": False})
    n = Node(cfg).start()
    try:
        assoc = _assoc(n.port)
        assert assoc.is_rejected
        assert any(e.get("detail", "").endswith("host not allowed") for e in read_audit(n.dirs.audit_log))
    finally:
        n.stop(timeout_s=5)


def test_store_is_durable_before_success_and_triaged(node: Node, sample_dicoms: dict[str, Path]) -> None:
    assoc = _assoc(node.port)
    ds = dcmread(sample_dicoms["nih_gcp_dx_chest_nofinding"])
    st = assoc.send_c_store(ds)
    assert st.Status == 0x0000
    # acknowledged => on disk and in the queue already
    inst = node.store.study_instances(str(ds.StudyInstanceUID))
    assert len(inst) == 1 and Path(inst[0].path).is_file()
    assert dcmread(inst[0].path).SOPInstanceUID == ds.SOPInstanceUID
    assoc.release()
    assert node.wait_idle(60)
    (s,) = node.queries.list_studies()
    assert s["state"] == "triaged" and s["decision"] in ("suspicious", "likely_normal")
    assert s["delivery_status"] == "delivered"                      # default: the outbox
    (sr_file,) = (node.dirs.outbox / str(ds.StudyInstanceUID)).glob("*.dcm")
    sr = dcmread(sr_file)
    assert sr.Modality == "SR" and sr.StudyInstanceUID == ds.StudyInstanceUID
    events = read_audit(node.dirs.audit_log)
    assert any(e.get("direction") == "received" and e["sop_instance_uid"] == ds.SOPInstanceUID
               and e["calling_ae"] == "GOODSCU" and e["outcome"] == 0 for e in events)
    assert any(e.get("direction") == "sent" and e["sop_instance_uid"] == sr.SOPInstanceUID for e in events)


def test_storage_failure_answers_out_of_resources(node: Node) -> None:
    ds = _dataset()
    blocker = node.spool.root / str(ds.StudyInstanceUID)
    blocker.write_bytes(b"")                                       # study folder cannot be made
    assoc = _assoc(node.port)
    assert assoc.send_c_store(ds).Status == 0xA700
    assert node.store.study_instances(str(ds.StudyInstanceUID)) == []
    blocker.unlink()                                               # space is back
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    assert len(node.store.study_instances(str(ds.StudyInstanceUID))) == 1


def test_malformed_input_is_refused_and_quarantined(node: Node, tmp_path: Path,
                                                     sample_dicoms: dict[str, Path]) -> None:
    assoc = _assoc(node.port)
    no_study = _dataset(study=False)
    assert assoc.send_c_store(no_study).Status == 0xA900
    # a file cut in the middle of its header, streamed as it is
    raw = sample_dicoms["highdicom_dx_canine_thorax_mono1"].read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(raw[:700])
    status = assoc.send_c_store(cut)
    assert status.Status in (0xC000, 0xA900)
    assert assoc.send_c_store(_dataset()).Status == 0x0000          # still serving
    assoc.release()
    entries = node.quarantine.entries()
    assert len(entries) == 2 and all(e["calling_ae"] == "GOODSCU" for e in entries)
    assert all((node.quarantine.root / f"{e['id']}.dcm").is_file() for e in entries)


def test_sr_and_own_output_are_acknowledged_not_triaged(node: Node, sample_dicoms: dict[str, Path]) -> None:
    assoc = _assoc(node.port)
    assert assoc.send_c_store(_dataset(ComprehensiveSRStorage)).Status == 0x0000
    ds = dcmread(sample_dicoms["nih_gcp_dx_chest_nofinding"])
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    assert node.wait_idle(60)
    (sr_file,) = (node.dirs.outbox / str(ds.StudyInstanceUID)).glob("*.dcm")
    assoc = _assoc(node.port)
    assert assoc.send_c_store(dcmread(sr_file)).Status == 0x0000    # a PACS echoing our SR back
    assoc.release()
    studies = node.queries.list_studies()
    assert len(studies) == 1 and studies[0]["n_instances"] == 1
    assert studies[0]["state"] == "triaged"


def test_other_storage_class_is_recorded_not_assessable(node: Node) -> None:
    assoc = _assoc(node.port)
    ds = _dataset(CTImageStorage)
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    assert node.wait_idle(60)
    detail = node.queries.get_study(str(ds.StudyInstanceUID))
    assert detail["decision"] == "not_assessable"
    (film,) = detail["result"]["films"]
    assert film["reason"] in ("non_image", "unsupported_sop_class")


def test_no_phi_in_audit(node: Node) -> None:
    assoc = _assoc(node.port)
    assoc.send_c_store(_dataset())
    assoc.release()
    text = node.dirs.audit_log.read_text()
    assert "Secret" not in text and "PHI-123" not in text
    wait_for(lambda: node.queries.list_studies(), 5)


def test_shadow_mode_triages_but_delivers_nothing(tmp_path: Path, tiny_model: Path,
                                                  sample_dicoms: dict[str, Path]) -> None:
    cfg = load_config(environ={}).replace(
        node={"host": "127.0.0.1", "port": 0, "state_dir": str(tmp_path / "s"), "quiet_period_s": 0.2,
              "shadow_mode": True},
        delivery={"destinations": ["PACS@127.0.0.1:9"], "summary_image": False},
        inference={"model_path": str(tiny_model)}, web={"enabled": False})
    n = Node(cfg).start()
    try:
        assoc = _assoc(n.port, contexts=[SecondaryCaptureImageStorage])
        assert assoc.send_c_store(dcmread(sample_dicoms["nih_gcp_dx_chest_nofinding"])).Status == 0
        assoc.release()
        assert n.wait_idle(60)
        (s,) = n.queries.list_studies()
        assert s["state"] == "triaged" and s["delivery_status"] == "none"
        assert n.queries.counts()["deliveries"] == {} and not any(n.dirs.outbox.iterdir())
        assert len(n.queries.current_result_objects(s["study_uid"])) == 1   # the SR is kept
    finally:
        n.stop(timeout_s=5)


def test_association_limit(tmp_path: Path, tiny_model: Path) -> None:
    cfg = load_config(environ={}).replace(
        node={"host": "127.0.0.1", "port": 0, "state_dir": str(tmp_path / "s"), "max_associations": 1},
        inference={"model_path": str(tiny_model)}, web={"enabled": False})
    n = Node(cfg).start()
    try:
        first = _assoc(n.port, contexts=[Verification])
        assert first.is_established
        second = _assoc(n.port, contexts=[Verification])
        assert second.is_rejected
        first.release()
        third = wait_for(lambda: (a := _assoc(n.port, contexts=[Verification])).is_established and a, 10)
        third.release()
        assert any("too many associations" in e.get("detail", "") for e in read_audit(n.dirs.audit_log))
    finally:
        n.stop(timeout_s=5)


class _SlowTriager:
    """The real pipeline, slowed down so that a stop arrives mid-triage."""

    def __init__(self, inner, delay_s: float):
        self.inner, self.delay_s = inner, delay_s

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def triage_dataset(self, ds, source=""):
        import time

        time.sleep(self.delay_s)
        return self.inner.triage_dataset(ds, source)


def test_stop_finishes_the_study_in_hand(tmp_path: Path, tiny_model: Path, sample_dicoms: dict[str, Path]) -> None:
    from cxr_triage.dicom_node.worker.triage import load_triager

    cfg = load_config(environ={}).replace(
        node={"host": "127.0.0.1", "port": 0, "state_dir": str(tmp_path / "s"), "quiet_period_s": 0.1},
        delivery={"summary_image": False}, inference={"model_path": str(tiny_model)}, web={"enabled": False})
    n = Node(cfg, triager=_SlowTriager(load_triager(cfg), 2.0)).start()
    ds = dcmread(sample_dicoms["nih_gcp_dx_chest_nofinding"])
    try:
        assoc = _assoc(n.port, contexts=[SecondaryCaptureImageStorage])
        assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        wait_for(lambda: n.queries.list_studies()[0]["state"] == "processing", 10, 0.05)
    finally:
        n.stop(timeout_s=30)
    after = StudyQueries(JobStore(n.dirs.queue_db)).get_study(str(ds.StudyInstanceUID))
    assert after["state"] == "triaged" and after["delivery_status"] == "delivered"


def test_refusal_statuses_are_the_storage_service_failures() -> None:
    """The SCP's C-STORE statuses are the ones PS3.4 B.2.3 (pynetdicom's table) defines."""
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

    from cxr_triage.dicom_node.receive import scp

    assert STORAGE_SERVICE_CLASS_STATUS[scp.SUCCESS][0] == "Success"
    for code in (scp.OUT_OF_RESOURCES, scp.DATASET_MISMATCH, scp.CANNOT_UNDERSTAND):
        assert STORAGE_SERVICE_CLASS_STATUS[code][0] == "Failure"
