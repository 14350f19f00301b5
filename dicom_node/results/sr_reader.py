"""Read a result SR made by ``build_result_sr`` back into decisions, scores and references.

The evaluation harness measures *through the node*: it sends films, receives the SR the PACS
would get, and reads the decision from it here, so what is scored is what was delivered.
Parsing keys on coded concepts (``sr_codes``), never on display text or item order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from highdicom.sr.utils import find_content_items
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from cxr_triage.contract.result import Decision, NotAssessableReason
from cxr_triage.contract.sop_classes import COMPREHENSIVE_3D_SR
from cxr_triage.dicom_node.results import sr_codes as C


@dataclass
class ParsedGroup:
    """One TID 1501 measurement group: the study's, or one film's."""

    decision: Decision
    score: float | None
    threshold: float | None
    operating_point: str | None
    reason: NotAssessableReason | None
    reason_detail: str | None
    referenced_sop_instance_uids: list[str]  # images, then refused non-image instances

    @property
    def sop_instance_uid(self) -> str | None:
        """The film's SOP Instance UID (film groups reference exactly one image)."""
        uids = self.referenced_sop_instance_uids
        return uids[0] if len(uids) == 1 else None


@dataclass
class ParsedResult:
    """What a result SR says, in the project's own types."""

    sr_sop_instance_uid: str
    sr_series_instance_uid: str
    study_instance_uid: str
    decision: Decision
    score: float | None
    threshold: float | None
    operating_point: str | None
    model_name: str | None
    model_version: str | None
    study: ParsedGroup
    films: list[ParsedGroup] = field(default_factory=list)
    evidence_sop_instance_uids: list[str] = field(default_factory=list)

    def film(self, sop_instance_uid: str) -> ParsedGroup:
        """The film group referencing this SOP Instance UID (KeyError if none)."""
        for group in self.films:
            if group.sop_instance_uid == sop_instance_uid:
                return group
        raise KeyError(sop_instance_uid)


def read_result_sr(ds: Dataset) -> ParsedResult:
    """Parse a cxr-triage result SR; ValueError when ``ds`` is not one (or is malformed)."""
    try:
        return _read(ds)
    except (KeyError, AttributeError, IndexError, TypeError) as exc:
        raise ValueError(f"not a readable cxr-triage result SR: {type(exc).__name__}: {exc}") \
            from exc


def _read(ds: Dataset) -> ParsedResult:
    if str(ds.get("SOPClassUID", "")) != COMPREHENSIVE_3D_SR or "ContentSequence" not in ds:
        raise ValueError("not a Comprehensive 3D SR document")
    templates = ds.get("ContentTemplateSequence", [])
    if not templates or str(templates[0].get("TemplateIdentifier", "")) != "1500":
        raise ValueError("SR root is not a TID 1500 Measurement Report")

    containers = find_content_items(ds, name=codes.DCM.ImagingMeasurements,
                                    value_type="CONTAINER")
    if not containers:
        raise ValueError("SR has no Imaging Measurements container")
    study_group: ParsedGroup | None = None
    films: list[tuple[int, ParsedGroup]] = []
    model_name = model_version = None
    for item in find_content_items(containers[0], name=codes.DCM.MeasurementGroup,
                                   value_type="CONTAINER"):
        identifier = _text(item, codes.DCM.TrackingIdentifier)
        if identifier == C.STUDY_GROUP_ID:
            study_group = _group(item)
            model_name = _text(item, codes.DCM.AlgorithmName)
            model_version = _text(item, codes.DCM.AlgorithmVersion)
        elif identifier and identifier.startswith(C.FILM_GROUP_PREFIX):
            index = int(identifier[len(C.FILM_GROUP_PREFIX):])
            films.append((index, _group(item)))
    if study_group is None:
        raise ValueError("SR has no cxr-triage study measurement group")

    evidence = [
        str(inst.ReferencedSOPInstanceUID)
        for study in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in study.get("ReferencedSeriesSequence", [])
        for inst in series.get("ReferencedSOPSequence", [])
    ]
    return ParsedResult(
        sr_sop_instance_uid=str(ds.SOPInstanceUID),
        sr_series_instance_uid=str(ds.SeriesInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        decision=study_group.decision,
        score=study_group.score,
        threshold=study_group.threshold,
        operating_point=study_group.operating_point,
        model_name=model_name,
        model_version=model_version,
        study=study_group,
        films=[g for _, g in sorted(films, key=lambda pair: pair[0])],
        evidence_sop_instance_uids=evidence,
    )


def _group(item: Dataset) -> ParsedGroup:
    decision_code = _code(item, C.TRIAGE_DECISION)
    if decision_code is None:
        raise ValueError("measurement group without a triage decision")
    reason_code = _code(item, C.NOT_ASSESSABLE_REASON)
    images = find_content_items(item, value_type="IMAGE")
    others = [str(i.UID) for i in find_content_items(item, name=C.NON_IMAGE_SOURCE,
                                                        value_type="UIDREF")]
    return ParsedGroup(
        decision=C.decision_from_code(decision_code),
        score=_num(item, C.ABNORMALITY_SCORE),
        threshold=_num(item, C.OPERATING_POINT_THRESHOLD),
        operating_point=_text(item, C.OPERATING_POINT),
        reason=C.reason_from_code(reason_code) if reason_code is not None else None,
        reason_detail=_text(item, C.NOT_ASSESSABLE_DETAIL),
        referenced_sop_instance_uids=[
            str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in images
        ] + others,
    )


def _one(item: Dataset, name: Code, value_type: str) -> Dataset | None:
    found = find_content_items(item, name=name, value_type=value_type)
    return found[0] if found else None


def _text(item: Dataset, name: Code) -> str | None:
    found = _one(item, name, "TEXT")
    return str(found.TextValue) if found is not None else None


def _num(item: Dataset, name: Code) -> float | None:
    found = _one(item, name, "NUM")
    if found is None or not found.get("MeasuredValueSequence"):
        return None
    return float(found.MeasuredValueSequence[0].NumericValue)


def _code(item: Dataset, name: Code) -> Code | None:
    found = _one(item, name, "CODE")
    if found is None:
        return None
    concept = found.ConceptCodeSequence[0]
    return Code(
        value=str(concept.CodeValue),
        scheme_designator=str(concept.CodingSchemeDesignator),
        meaning=str(concept.CodeMeaning),
    )
