"""One study, one patient: the receiving side's check that a Study Instance UID is never
shared by two patients in the node (issue 23, class 1).

A re-used worklist UID, a manual entry or a router's coercion can send two patients' films
under one Study Instance UID. Grouped by that UID they would make one result: filed under
whichever patient's film was read first, listing both films, its decision driven by the other
patient's film. The study belongs to the patient of its first stored instance; an instance of
another patient is *held for reconciliation* (quarantined with the reason, never triaged, the
conflict audited) rather than triaged as a study of its own: its only Study Instance UID is the
conflicted one, so a result for it would land in that study at the PACS beside the other
patient's result, and a film whose identity is in doubt needs a person, not a triage.

Patients are compared by Patient ID (0010,0020) and, where both instances carry it, Issuer of
Patient ID (0010,0021), PS3.3 C.7.1.1 (:meth:`cxr_triage.contract.patient.PatientKey.same_id`);
a missing Patient ID differs from a present one. Logs
and the audit name patients only by a fingerprint (:func:`fingerprint`, the first 12 hex digits
of the SHA-256 of ID and issuer), never by name or ID; the held file keeps everything.
"""

from __future__ import annotations

import hashlib
import threading
import zlib
from collections import OrderedDict
from typing import Any

from pydicom import dcmread

from cxr_triage.contract.patient import PatientKey
from cxr_triage.dicom_node.store.jobs import JobStore

PATIENT_TAGS = ["PatientID", "IssuerOfPatientID"]
_LOCKS = 64
_CACHED_STUDIES = 10_000


def patient_key(ds: Any) -> PatientKey:
    """The patient of a data set (header read with :data:`PATIENT_TAGS`); Patient ID ""
    when it has none."""
    return PatientKey.from_header(ds) or PatientKey(patient_id="")


def fingerprint(key: PatientKey) -> str:
    """A patient for logs and the audit: 12 hex digits of SHA-256("ID^issuer")."""
    return hashlib.sha256(f"{key.patient_id}^{key.issuer}".encode()).hexdigest()[:12]


class StudyPatients:
    """Which patient each study belongs to: the first instance stored decides (cached,
    else read from the header of the study's earliest stored instance). :meth:`lock`
    serialises the check-then-store step of one study across associations."""

    def __init__(self, store: JobStore):
        self.store = store
        self._locks = [threading.Lock() for _ in range(_LOCKS)]
        self._owner: OrderedDict[str, PatientKey] = OrderedDict()
        self._cache_lock = threading.Lock()

    def lock(self, study_uid: str) -> threading.Lock:
        return self._locks[zlib.crc32(study_uid.encode()) % _LOCKS]

    def owner(self, study_uid: str) -> PatientKey | None:
        """The study's patient, or None for a study the node has not stored yet (or whose
        first file cannot be read: nothing to compare with)."""
        with self._cache_lock:
            if study_uid in self._owner:
                self._owner.move_to_end(study_uid)
                return self._owner[study_uid]
        instances = self.store.study_instances(study_uid)
        if not instances:
            return None
        first = min(instances, key=lambda rec: rec.received_at)
        try:
            key = patient_key(dcmread(first.path, stop_before_pixels=True, specific_tags=PATIENT_TAGS))
        except Exception:  # noqa: BLE001 - a file gone or unreadable: nothing to compare with
            return None
        self.remember(study_uid, key)
        return key

    def remember(self, study_uid: str, key: PatientKey) -> None:
        """The study's patient, once its first instance is stored."""
        with self._cache_lock:
            self._owner.setdefault(study_uid, key)
            self._owner.move_to_end(study_uid)
            while len(self._owner) > _CACHED_STUDIES:
                self._owner.popitem(last=False)

    def conflict(self, study_uid: str, key: PatientKey) -> PatientKey | None:
        """The study's patient when it is not ``key``'s (hold the instance), else None."""
        owner = self.owner(study_uid)
        return owner if owner is not None and not owner.same_id(key) else None
