"""The SR storage classes a result may travel as: Comprehensive 3D SR, or a fallback.

The node writes its result as a Comprehensive 3D SR (``sr.build_result_sr``). Its content uses
no SCOORD3D item and no by-reference relationship, so the same document is a valid
**Comprehensive SR** (PS3.3 A.35.3) and **Enhanced SR** (A.35.2): a destination that does not
accept Comprehensive 3D SR gets it as one of those (:data:`FALLBACKS`, in order of
preference), checked by :func:`fits` before it is used.

A fallback is another SOP instance (another SOP class under one SOP Instance UID would be a
conflict), so its SOP Instance UID is derived from the original's and the class
(:func:`fallback_uid`): every retry of the fallback, and the fallback of an amended result's
predecessor, has a stable UID. Series, study, content and evidence are the original's.
"""

from __future__ import annotations

import copy

from pydicom import Dataset
from pydicom.uid import generate_uid

from cxr_triage.contract.sop_classes import COMPREHENSIVE_3D_SR

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"

#: SR storage classes by name (for reports and logs).
SR_CLASS_NAMES = {
    COMPREHENSIVE_3D_SR: "Comprehensive 3D SR",
    COMPREHENSIVE_SR: "Comprehensive SR",
    ENHANCED_SR: "Enhanced SR",
}

#: What a class may fall back to, in order of preference.
FALLBACKS: dict[str, tuple[str, ...]] = {
    COMPREHENSIVE_3D_SR: (COMPREHENSIVE_SR, ENHANCED_SR),
}

# Value types each class allows (PS3.3 A.35.2.3.1 / A.35.3.3.1): SCOORD3D only in 3D SR.
_NOT_ALLOWED = {
    COMPREHENSIVE_SR: {"SCOORD3D"},
    ENHANCED_SR: {"SCOORD3D"},
}
_BY_REFERENCE_ALLOWED = {COMPREHENSIVE_SR}


def fallback_uid(sop_instance_uid: str, sop_class_uid: str) -> str:
    """The SOP Instance UID of ``sop_instance_uid`` sent as ``sop_class_uid`` (stable)."""
    return str(generate_uid(entropy_srcs=["cxr-triage SR fallback", str(sop_instance_uid),
                                          str(sop_class_uid)]))


def fits(ds: Dataset, sop_class_uid: str) -> bool:
    """Whether the document's content is allowed in ``sop_class_uid`` (value types, and
    by-reference relationships, which Enhanced SR forbids)."""
    banned = _NOT_ALLOWED.get(sop_class_uid)
    if banned is None:
        return str(ds.get("SOPClassUID", "")) == sop_class_uid
    by_reference = sop_class_uid in _BY_REFERENCE_ALLOWED

    def ok(item: Dataset) -> bool:
        if str(item.get("ValueType", "")) in banned:
            return False
        if not by_reference and "ReferencedContentItemIdentifier" in item:
            return False
        return all(ok(child) for child in item.get("ContentSequence", []))

    return ok(ds)


def as_sr_class(ds: Dataset, sop_class_uid: str) -> Dataset:
    """A copy of the SR document as ``sop_class_uid`` (one of its :data:`FALLBACKS`), with
    its derived SOP Instance UID; predecessors that were sent as Comprehensive 3D SR are
    named by their own fallback of the same class (what that destination received).
    ValueError when the content does not fit the class."""
    original = str(ds.SOPClassUID)
    if sop_class_uid == original:
        return ds
    if sop_class_uid not in FALLBACKS.get(original, ()):
        raise ValueError(f"an SR of class {original} is not sent as {sop_class_uid}")
    if not fits(ds, sop_class_uid):
        raise ValueError(f"the SR content does not fit {SR_CLASS_NAMES[sop_class_uid]}")
    out = copy.deepcopy(ds)
    out.SOPClassUID = sop_class_uid
    out.SOPInstanceUID = fallback_uid(str(ds.SOPInstanceUID), sop_class_uid)
    if getattr(out, "file_meta", None) is not None:
        out.file_meta.MediaStorageSOPClassUID = out.SOPClassUID
        out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    for study in out.get("PredecessorDocumentsSequence", []):
        for series in study.get("ReferencedSeriesSequence", []):
            for ref in series.get("ReferencedSOPSequence", []):
                if str(ref.ReferencedSOPClassUID) == original:
                    ref.ReferencedSOPInstanceUID = fallback_uid(str(ref.ReferencedSOPInstanceUID),
                                                                sop_class_uid)
                    ref.ReferencedSOPClassUID = sop_class_uid
    return out
