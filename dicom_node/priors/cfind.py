"""The PACS's earlier studies of a patient, by C-FIND (PS3.4 Annex C, Query/Retrieve Service).

One association per query to ``[priors] query_destination``, proposing the Study Root
Query/Retrieve Information Model - FIND (1.2.840.10008.5.1.4.1.2.2.1), one C-FIND at
Query/Retrieve Level STUDY (PS3.4 C.6.2.1). Matching keys: Patient ID (0010,0020), Issuer of
Patient ID (0010,0021) when the study names one, Study Date (0008,0020) as a range from
``years`` back (PS3.4 C.2.2.2.5). Return keys: Study Instance UID, Study Date, Accession
Number, Study Description, Modalities in Study, Patient's Name and Birth Date (so the caller
can check the identity). Modalities in Study is asked as a return key and filtered on the
node (CR or DX, or not returned): multiple-value matching on it is not required of an SCP.

Answers are checked (a Pending response per study, a final Success); a failure, a refused
association or a timeout raises :class:`PriorQueryError` (the caller logs it and goes on
with the node's own results). Nothing of the answers is logged (PHI).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from cxr_triage.contract.patient import PatientKey
from cxr_triage.dicom_node.delivery.scu import associate, not_established_reason

#: the modalities of a chest film (PS3.3 C.7.3.1.1.1): Computed and Digital Radiography
FILM_MODALITIES = frozenset({"CR", "DX"})
_PENDING = (0xFF00, 0xFF01)


class PriorQueryError(RuntimeError):
    """The PACS could not be asked or did not answer with Success (the message names why)."""


@dataclass(frozen=True, kw_only=True)
class FoundStudy:
    """One study-level C-FIND answer: the study and the patient it names (PHI: matched,
    never logged)."""

    study_uid: str
    patient: PatientKey
    study_date: str = ""
    accession_number: str = ""
    description: str = ""
    modalities: tuple[str, ...] = ()


def study_query(patient: PatientKey, since: dt.date) -> Dataset:
    """The C-FIND identifier (PS3.4 C.6.2.1.2, study level) for ``patient``'s studies dated
    ``since`` or later."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = patient.patient_id
    if patient.issuer:
        ds.IssuerOfPatientID = patient.issuer
    ds.PatientName = ""
    ds.PatientBirthDate = ""
    ds.StudyInstanceUID = ""
    ds.StudyDate = f"{since:%Y%m%d}-"
    ds.AccessionNumber = ""
    ds.StudyDescription = ""
    ds.ModalitiesInStudy = ""
    return ds


def find_studies(destination: tuple[str, str, int], calling_ae: str, patient: PatientKey,
                 since: dt.date, timeout_s: float) -> list[FoundStudy]:
    """``patient``'s CR/DX studies at ``destination`` (AE, host, port) dated ``since`` or later,
    as the PACS answered them (the caller checks the identity). ``timeout_s`` bounds the
    connection, the association and each response. :class:`PriorQueryError` on any failure."""
    aet, host, port = destination
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    assoc = associate(ae, host, port, ae_title=aet)
    if not assoc.is_established:
        raise PriorQueryError(f"no association with {aet}@{host}:{port}: {not_established_reason(assoc)}")
    try:
        answers = answers_of(assoc.send_c_find(study_query(patient, since),
                                             StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    return [s for s in answers if not s.modalities or FILM_MODALITIES & set(s.modalities)]


def answers_of(responses: Iterable[tuple[Dataset | None, Dataset | None]]) -> list[FoundStudy]:
    """The Pending identifiers up to a final Success (PS3.4 C.4.1.1.4); PriorQueryError otherwise."""
    found: list[FoundStudy] = []
    for status, identifier in responses:
        code = int(status.Status) if status is not None and "Status" in status else None
        if code in _PENDING and identifier is not None:
            found.append(_found(identifier))
        elif code == 0x0000:
            return found
        else:
            raise PriorQueryError("C-FIND failed: " + ("no response" if code is None else f"status 0x{code:04X}"))
    raise PriorQueryError("C-FIND ended without a final status")


def _found(ds: Dataset) -> FoundStudy:
    modalities = ds.get("ModalitiesInStudy") or ()
    return FoundStudy(
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        patient=PatientKey.from_header(ds) or PatientKey(patient_id=""),
        study_date=str(ds.get("StudyDate", "") or ""),
        accession_number=str(ds.get("AccessionNumber", "") or ""),
        description=str(ds.get("StudyDescription", "") or ""),
        modalities=tuple(str(m) for m in ([modalities] if isinstance(modalities, str) else modalities)))
