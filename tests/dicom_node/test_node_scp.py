"""The receiving side, in process: association checks, durable receipt, statuses, quarantine."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

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
from cxr_triage.dicom_node.delivery.scu import associate
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
    return associate(ae, "127.0.0.1", port, ae_title=NODE_AET)


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


# -- duplicates, changed instances, large instances, every rejection audited (issue 15) -------

def _storescu_v(port: int, film: Path, aet: str = "GOODSCU") -> list[str]:
    return [str(DCMTK / "storescu"), "-v", "-aet", aet, "-aec", NODE_AET, "-to", "60", "-ta", "60",
            "-td", "120", "127.0.0.1", str(port), str(film)]


def _spool_files(node: Node) -> list[Path]:
    return sorted(p for p in node.spool.root.rglob("*") if p.is_file())


def test_one_instance_sent_by_six_senders_at_once(node: Node, tmp_path: Path) -> None:
    """Six storescu processes send the same instance at the same moment: each one's data set
    goes to a file of its own, all six are answered Success, one instance is recorded, and
    nothing is left over (issue 15, case 4)."""
    from support.receive_support import instance_of_size

    film = instance_of_size(tmp_path / "film.dcm", 8_000_000)
    sop = str(dcmread(film, stop_before_pixels=True).SOPInstanceUID)
    procs = [subprocess.Popen(_storescu_v(node.port, film), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(6)]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    answers = [[line for line in out.splitlines() if "Store Response" in line] for out in outputs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert all(a == ["I: Received Store Response (Success)"] for a in answers), answers
    rows = node.store.connection().execute("SELECT sop_instance_uid, path FROM instances").fetchall()
    assert [r[0] for r in rows] == [sop]
    assert _spool_files(node) == [Path(rows[0][1])]               # no .part, nothing in .incoming
    received = [e for e in read_audit(node.dirs.audit_log)
                if e.get("direction") == "received" and e.get("sop_instance_uid") == sop]
    assert len(received) == 6 and all(e["status"] == "0x0000" for e in received)
    # the crash sweep still finds every kind of temporary file
    (node.spool.incoming / ".recv-abc.part").write_bytes(b"half a data set")
    (Path(rows[0][1]).parent / f".{Path(rows[0][1]).name}.x1y2.part").write_bytes(b"half")
    assert node.spool.sweep_partials() == 2
    assert _spool_files(node) == [Path(rows[0][1])]


def _instance_row(node: Node, sop: str) -> dict:
    row = node.store.connection().execute("SELECT * FROM instances WHERE sop_instance_uid=?",
                                          (sop,)).fetchone()
    return dict(row)


def _study_row(node: Node, study: str) -> dict:
    return dict(node.store.connection().execute("SELECT * FROM studies WHERE study_uid=?",
                                                (study,)).fetchone())


def test_changed_instance_keeps_both_files_and_retriages(node: Node, sample_dicoms: dict[str, Path],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """The same SOP Instance UID with other pixels after the study was triaged: both files
    kept, the study re-opened and triaged again, the new result supersedes the old one, the
    conflict audited and logged; an identical re-send stays a no-op (issue 15, case 5)."""
    import logging

    ds = dcmread(sample_dicoms["nih_gcp_dx_chest_nofinding"])
    study, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
    assoc = _assoc(node.port)
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    assert node.wait_idle(60)
    first = _study_row(node, study)
    old_file = Path(_instance_row(node, sop)["path"])
    old_bytes = old_file.read_bytes()
    assert first["state"] == "triaged"

    changed = dcmread(sample_dicoms["nih_gcp_dx_chest_nofinding"])
    changed.PixelData = bytes(255 - b for b in changed.PixelData)          # other pixels
    with caplog.at_level(logging.WARNING, logger="cxr_triage.dicom_node.receive.scp"):
        assoc = _assoc(node.port)
        assert assoc.send_c_store(changed).Status == 0x0000
        assoc.release()
    reopened = _study_row(node, study)
    assert reopened["generation"] == first["generation"] + 1 and reopened["state"] != "triaged"
    wait_for(lambda: (s := _study_row(node, study))["state"] == "triaged"
             and s["result_id"] != first["result_id"], 60)
    assert node.wait_idle(60)

    from cxr_triage.dicom_node.store.spool import dataset_sha256

    # both files kept: the old one untouched, the new one under a name of its own
    row = _instance_row(node, sop)
    new_file = Path(row["path"])
    assert new_file != old_file and new_file.parent == old_file.parent
    assert old_file.read_bytes() == old_bytes
    assert row["sha256"] == dataset_sha256(new_file) != dataset_sha256(old_file)
    assert dcmread(new_file).PixelData == changed.PixelData
    (conflict,) = node.store.instance_conflicts(sop)
    assert (conflict["old_path"], conflict["new_path"]) == (str(old_file), str(new_file))
    # the new result supersedes the old; both SRs reached the outbox, the new one last
    results = node.store.connection().execute(
        "SELECT id, superseded FROM results WHERE study_uid=? ORDER BY id", (study,)).fetchall()
    assert [(r[0], r[1]) for r in results] == [(first["result_id"], 1), (_study_row(node, study)["result_id"], 0)]
    assert len(list((node.dirs.outbox / study).glob("*.dcm"))) == 2
    # audited and logged, by UID only
    (event,) = [e for e in read_audit(node.dirs.audit_log) if e.get("conflict") == "changed_instance"]
    assert event["sop_instance_uid"] == sop and event["study_uid"] == study
    assert event["old_sha256"] == conflict["old_sha256"] and event["new_sha256"] == row["sha256"]
    (line,) = [r for r in caplog.records if r.getMessage().startswith("changed instance")]
    assert line.sop_instance_uid == sop and line.study_uid == study
    text = node.dirs.audit_log.read_text() + "\n".join(r.getMessage() for r in caplog.records)
    assert "Covid0000" not in text and str(ds.PatientID) not in text

    # an identical re-send changes nothing
    before = _study_row(node, study)
    assoc = _assoc(node.port)
    assert assoc.send_c_store(changed).Status == 0x0000
    assoc.release()
    after = _study_row(node, study)
    assert (after["generation"], after["state"], after["result_id"]) == (
        before["generation"], "triaged", before["result_id"])
    assert len(node.store.instance_conflicts(sop)) == 1 and _instance_row(node, sop)["path"] == str(new_file)


def _quiet_node(tmp_path: Path, tiny_model: Path, **node: Any) -> Node:
    """A node that does not triage during the test (quiet period of 10 minutes)."""
    cfg = load_config(environ={}).replace(
        node={"host": "127.0.0.1", "port": 0, "state_dir": str(tmp_path / "state"),
              "quiet_period_s": 600.0, "allowed_calling_aets": ["GOODSCU"], **node},
        inference={"model_path": str(tiny_model), "threads": 1},
        delivery={"summary_image": False}, web={"enabled": False})
    return Node(cfg).start()


@pytest.fixture
def quiet_node(tmp_path: Path, tiny_model: Path):
    n = _quiet_node(tmp_path, tiny_model)
    yield n
    n.stop(timeout_s=10)


@pytest.fixture
def limited_node(tmp_path: Path, tiny_model: Path):
    n = _quiet_node(tmp_path, tiny_model, max_instance_bytes=30_000_000)
    yield n
    n.stop(timeout_s=10)


def test_large_instance_is_streamed_to_the_spool_not_held_in_memory(quiet_node: Node, tmp_path: Path) -> None:
    """A 20 MB C-STORE from storescu: the node allocates a small fraction of it (the data set
    is written to disk as it arrives and moved into the spool), and the file is the one
    received (issue 15, case 6)."""
    import tracemalloc

    from support.receive_support import instance_of_size

    film = instance_of_size(tmp_path / "big.dcm", 20_000_000)
    size = film.stat().st_size
    tracemalloc.start()
    try:
        out = subprocess.run(_storescu_v(quiet_node.port, film), capture_output=True, text=True,
                             timeout=120)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "Received Store Response (Success)" in out.stdout + out.stderr, out.stderr
    assert peak < 0.25 * size, f"node allocated {peak / size:.2f} x the instance size"
    (inst,) = quiet_node.store.study_instances(str(dcmread(film, stop_before_pixels=True).StudyInstanceUID))
    assert dcmread(inst.path).PixelData == dcmread(film).PixelData
    from cxr_triage.dicom_node.store.spool import dataset_sha256

    assert inst.sha256 == dataset_sha256(Path(inst.path)) == dataset_sha256(film)  # digested as it came
    assert not any(quiet_node.spool.incoming.iterdir())


def test_instance_over_the_size_limit_is_refused_out_of_resources(limited_node: Node, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """``[node] max_instance_bytes``: a larger data set is answered 0xA700 (Refused: Out of
    Resources), audited and logged, and nothing of it is kept; a smaller one is stored."""
    import logging

    from support.receive_support import instance_of_size

    big = instance_of_size(tmp_path / "big.dcm", 32_000_000, seed=1)
    small = instance_of_size(tmp_path / "small.dcm", 1_000_000, seed=2)
    big_sop = str(dcmread(big, stop_before_pixels=True).SOPInstanceUID)
    with caplog.at_level(logging.WARNING, logger="cxr_triage.dicom_node.receive.scp"):
        assoc = _assoc(limited_node.port)
        assert assoc.send_c_store(big).Status == 0xA700
        assert assoc.send_c_store(small).Status == 0x0000          # the association goes on
        assoc.release()
    assert [r[0] for r in limited_node.store.connection().execute("SELECT sop_instance_uid FROM instances")] == [
        str(dcmread(small, stop_before_pixels=True).SOPInstanceUID)]
    (event,) = [e for e in read_audit(limited_node.dirs.audit_log) if e.get("sop_instance_uid") == big_sop]
    assert event["status"] == "0xA700" and event["outcome"] == 4 and "max_instance_bytes" in event["detail"]
    assert event["size"] > 30_000_000 and event["calling_ae"] == "GOODSCU"
    (line,) = [r for r in caplog.records if "max_instance_bytes" in r.getMessage()]
    assert line.sop_instance_uid == big_sop and line.status == "0xA700"
    assert not any(limited_node.spool.incoming.iterdir()) and limited_node.quarantine.entries() == []


def test_every_rejected_association_is_audited(node: Node) -> None:
    """A calling AE title of 16 spaces (pynetdicom aborts while decoding the A-ASSOCIATE-RQ,
    before any EVT_REQUESTED/EVT_REJECTED), random bytes, and an association refused while
    the node stops each leave a Security Alert; a bare TCP connect (a health check) does not
    (issue 15, case 7)."""
    import socket

    from support.receive_support import raw_associate_rq

    def alerts() -> list[dict]:
        return [e for e in read_audit(node.dirs.audit_log) if e["event_id"] == "110113"]

    def no_associations() -> bool:
        return not node.ae.active_associations

    socket.create_connection(("127.0.0.1", node.port)).close()      # a health check
    wait_for(no_associations, 30)
    for payload in (raw_associate_rq(NODE_AET, b" " * 16, node.port), b"\x99" * 64):
        with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:
            s.sendall(payload)
            assert s.recv(1)[:1] == b"\x07"                          # A-ABORT
    wait_for(lambda: len(alerts()) >= 2, 30)
    wait_for(no_associations, 30)
    got = alerts()
    assert len(got) == 2 and all(a["peer"] == "127.0.0.1" and a["called_ae"] == NODE_AET for a in got)
    assert all("aborted before negotiation" in a["detail"] for a in got)
    assert "blank calling AE title" in got[0]["detail"]
    node.handler.accepting = False                                   # stopping
    assert _assoc(node.port, contexts=[Verification]).is_rejected
    node.handler.accepting = True
    assert alerts()[-1]["calling_ae"] == "GOODSCU" and alerts()[-1]["detail"].endswith("node is stopping")
