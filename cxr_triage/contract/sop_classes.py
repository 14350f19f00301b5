"""The SOP classes the node accepts, triages and produces: the one list (PS3.4 Annex B.5).

Every other storage class is accepted and recorded as not assessable (a router sends whole
studies), except Structured Reports, which the node skips (loop prevention: its own output).
"""

from __future__ import annotations

#: Image storage classes the model may read (CR, DX For Presentation/Processing, Secondary Capture).
TRIAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",
}
#: Multi-frame Secondary Capture classes: refused as multi-frame rather than as unsupported, even
#: with one frame (decided in one place: :func:`cxr_triage.inference.gate.check_object`).
MULTI_FRAME_SOP_CLASSES: frozenset[str] = frozenset({
    "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4",
})
#: Every Structured Report storage class starts with this (PS3.4 B.5: 1.2.840.10008.5.1.4.1.1.88.x).
SR_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
#: What the node produces: Comprehensive 3D SR (result) and Secondary Capture (summary image).
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def is_triage_class(sop_class_uid: str | None) -> bool:
    """True for the image classes the model reads."""
    return str(sop_class_uid or "") in TRIAGE_SOP_CLASSES


def is_sr_class(sop_class_uid: str | None) -> bool:
    """True for any Structured Report storage class."""
    return str(sop_class_uid or "").startswith(SR_SOP_CLASS_PREFIX)
