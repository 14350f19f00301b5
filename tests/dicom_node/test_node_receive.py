"""The C-STORE handler without a network: instances recorded before digests were kept
(schema 1) compared by their spooled file, and a received file moved, never copied."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

from pydicom import dcmread
from support.receive_support import instance_of_size

from cxr_triage.dicom_node.receive.scp import StoreHandler
from cxr_triage.dicom_node.store.audit import AuditLog, read_audit
from cxr_triage.dicom_node.store.jobs import JobStore
from cxr_triage.dicom_node.store.spool import Quarantine, Spool, StateDirs, dataset_sha256


class _Event:
    """A C-STORE event as pynetdicom gives it with STORE_RECV_CHUNKED_DATASET: the data set
    already in a file (``dataset_path``)."""

    def __init__(self, path: Path, sop_class: str, sop_uid: str):
        req = SimpleNamespace(ae_title="SCU", address="127.0.0.1",
                              primitive=SimpleNamespace(calling_ae_title="SCU"))
        self.assoc = SimpleNamespace(requestor=req)
        self.request = SimpleNamespace(AffectedSOPInstanceUID=sop_uid, AffectedSOPClassUID=sop_class)
        self.dataset_path = path


def _handler(root: Path) -> tuple[StoreHandler, StateDirs]:
    dirs = StateDirs(root).create()
    return StoreHandler(JobStore(dirs.queue_db), Spool(dirs.spool), Quarantine(dirs.quarantine),
                        AuditLog(dirs.audit_log), "CXRTRIAGE"), dirs


def _send(handler: StoreHandler, film: Path, tmp: Path) -> int:
    """What pynetdicom does: a fresh file per C-STORE, removed after the handler if left."""
    received = tmp / f"recv-{film.name}"
    shutil.copyfile(film, received)
    hdr = dcmread(film, stop_before_pixels=True)
    try:
        return handler.on_store(_Event(received, str(hdr.SOPClassUID), str(hdr.SOPInstanceUID)))
    finally:
        received.unlink(missing_ok=True)


def test_received_file_is_moved_into_the_spool(tmp_path: Path) -> None:
    handler, dirs = _handler(tmp_path / "state")
    film = instance_of_size(tmp_path / "a.dcm", 200_000)
    received = dirs.spool / ".incoming" / ".recv-1.part"
    shutil.copyfile(film, received)
    inode = received.stat().st_ino
    hdr = dcmread(film, stop_before_pixels=True)
    assert handler.on_store(_Event(received, str(hdr.SOPClassUID), str(hdr.SOPInstanceUID))) == 0
    (inst,) = handler.store.study_instances(str(hdr.StudyInstanceUID))
    assert Path(inst.path).stat().st_ino == inode and not received.exists()   # renamed
    assert inst.sha256 == dataset_sha256(film) and inst.size == film.stat().st_size


def test_instance_recorded_before_digests_is_compared_by_its_file(tmp_path: Path) -> None:
    """A schema-1 row has no SHA-256: a re-send is compared with the spooled file (the digest
    is filled in), so an identical one stays a no-op and a changed one re-opens the study."""
    handler, dirs = _handler(tmp_path / "state")
    study = "1.2.826.0.1.3680043.8.498.1"
    film = instance_of_size(tmp_path / "a.dcm", 100_000, seed=1, study=study)
    sop = str(dcmread(film, stop_before_pixels=True).SOPInstanceUID)
    assert _send(handler, film, tmp_path) == 0
    con = handler.store.connection()
    con.execute("UPDATE instances SET sha256=NULL")                      # as schema 1 left it
    con.execute("UPDATE studies SET state='triaged'")
    gen = con.execute("SELECT generation FROM studies").fetchone()[0]

    assert _send(handler, film, tmp_path) == 0                           # identical
    row = con.execute("SELECT sha256, path FROM instances").fetchone()
    assert row[0] == dataset_sha256(film)
    assert tuple(con.execute("SELECT state, generation FROM studies").fetchone()) == ("triaged", gen)

    other = instance_of_size(tmp_path / "b.dcm", 100_000, seed=2, study=study, sop=sop)
    assert _send(handler, other, tmp_path) == 0                          # changed
    assert tuple(con.execute("SELECT state, generation FROM studies").fetchone()) == ("receiving", gen + 1)
    new_path = con.execute("SELECT path FROM instances").fetchone()[0]
    assert new_path != row[1] and Path(row[1]).is_file() and Path(new_path).is_file()
    assert dataset_sha256(Path(new_path)) == dataset_sha256(other)
    assert [e["conflict"] for e in read_audit(dirs.audit_log) if e.get("conflict")] == ["changed_instance"]
