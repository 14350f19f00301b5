"""The result objects on disk: each written once under ``results/<study>/`` before the
result is committed, so that every retry resends the very same file (same SOP Instance UIDs)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from cxr_triage.dicom_node.store.jobs import ResultObject
from cxr_triage.dicom_node.store.spool import safe_name, write_atomic


def save_result_objects(objects: list[Dataset], results_dir: Path, study_uid: str) -> list[ResultObject]:
    """Write each object once (fsync + rename) as ``results/<study>/<SOP Instance UID>.dcm``
    (DICOM file format, PS3.10; Explicit VR Little Endian unless the object has a transfer
    syntax): retries resend these very files, so the SOP Instance UIDs never change.
    Returns one :class:`ResultObject` per object, in order; OSError when a write fails."""
    saved = []
    for ds in objects:
        if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
            ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        path = write_atomic(results_dir / safe_name(study_uid) / f"{safe_name(str(ds.SOPInstanceUID))}.dcm",
                            buf.getvalue())
        saved.append(ResultObject(str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID),
                                  str(ds.SOPClassUID), str(path)))
    return saved
