"""The study as people know it: accession number, patient ID and name (PHI: the worklist
shows them behind its login; they are never logged and never in metrics).

Read from the DICOM headers (PS3.3 C.7.1.1 Patient Module, C.7.2.1 General Study Module) by
the worker at triage and by the worklist before triage, and kept on the study row.
"""

from __future__ import annotations

from typing import Any, Iterable

from cxr_triage.dicom_node.store.db import Connection

#: studies column -> the DICOM attribute it is read from
IDENTITY_KEYWORDS = {"accession_number": "AccessionNumber", "patient_id": "PatientID", "patient_name": "PatientName"}
IDENTITY_FIELDS = tuple(IDENTITY_KEYWORDS)


def identity_from_headers(headers: Iterable[Any]) -> dict[str, str]:
    """:data:`IDENTITY_FIELDS` of a study from its instances' headers (pydicom data sets): each
    from the first header that has it, "" where none has."""
    out = dict.fromkeys(IDENTITY_FIELDS, "")
    for ds in headers:
        for key, keyword in IDENTITY_KEYWORDS.items():
            if not out[key]:
                out[key] = str(ds.get(keyword, "") or "").strip()
    return out


def write_identity(con: Connection, study_uid: str, identity: dict[str, str]) -> None:
    """Set the study row's identity columns inside the caller's transaction ("" -> NULL)."""
    values = [str(identity.get(k) or "") or None for k in IDENTITY_FIELDS]
    con.execute("UPDATE studies SET accession_number=?, patient_id=?, patient_name=? WHERE study_uid=?",
                (*values, study_uid))
