"""Read a result SR made by ``build_result_sr`` back into decisions, scores and references.

Parsed with highdicom (``Comprehensive3DSR.from_dataset``, or the Comprehensive / Enhanced SR
a destination without Comprehensive 3D SR received, the Measurement Report's planar ROI
groups, typed content items). Scores come back exact: the Floating Point Value of each NUM.

The evaluation harness measures *through the node*: it sends films, receives the SR the PACS
would get, and reads the decision from it here, so what is scored is what was delivered.
Parsing keys on coded concepts (``sr_codes``), never on display text or item order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import highdicom as hd
from highdicom.sr.enum import ValueTypeValues
from highdicom.sr.utils import find_content_items
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from cxr_triage.contract.result import Escalation
from cxr_triage.contract.sop_classes import COMPREHENSIVE_3D_SR
from cxr_triage.contract.study import Outcome, ResultPart
from cxr_triage.dicom_node.results import sr_codes as C
from cxr_triage.dicom_node.results.sr_classes import COMPREHENSIVE_SR, ENHANCED_SR


@dataclass(frozen=True, kw_only=True)
class ParsedGroup(Outcome):
    """One result read back: a film's (TID 1410 group, or a non-image result) or the study's
    (the report-level Qualitative Evaluations); the contract's :class:`Outcome` plus what it
    references: a film its image (or refused non-image instance), the study every film's."""

    referenced_sop_instance_uids: list[str] = field(default_factory=list)

    @property
    def sop_instance_uid(self) -> str | None:
        """The film's SOP Instance UID (film groups reference exactly one image)."""
        uids = self.referenced_sop_instance_uids
        return uids[0] if len(uids) == 1 else None


@dataclass(frozen=True, kw_only=True)
class ParsedResult(ResultPart):
    """What a result SR says: the contract's :class:`ResultPart` (the study outcome, model,
    ``sr_uid``) plus the SR's series, study, film groups and evidence."""

    outcome: ParsedGroup
    sr_series_instance_uid: str
    study_instance_uid: str
    films: list[ParsedGroup] = field(default_factory=list)
    evidence_sop_instance_uids: list[str] = field(default_factory=list)

    @property
    def study(self) -> ParsedGroup:
        """The study's group (the report-level evaluations)."""
        return self.outcome

    @property
    def sr_sop_instance_uid(self) -> str:
        return str(self.sr_uid)

    # the study outcome's values, as attributes of the result (hl7, sr_plain, evaluation read them)
    decision = property(lambda self: self.outcome.decision)
    score = property(lambda self: self.outcome.score)
    threshold = property(lambda self: self.outcome.threshold)
    operating_point = property(lambda self: self.outcome.operating_point)
    nodule_score = property(lambda self: self.outcome.nodule_score)
    nodule_threshold = property(lambda self: self.outcome.nodule_threshold)
    nodule_flag = property(lambda self: self.outcome.nodule_flag)
    nodule_point = property(lambda self: self.outcome.nodule_point)

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


#: The classes a result SR is delivered as (``sr_classes``: Comprehensive 3D SR, or a fallback).
_DOCUMENT_CLASSES: dict[str, type[hd.sr.Comprehensive3DSR | hd.sr.ComprehensiveSR | hd.sr.EnhancedSR]] = {
    COMPREHENSIVE_3D_SR: hd.sr.Comprehensive3DSR,
    COMPREHENSIVE_SR: hd.sr.ComprehensiveSR,
    ENHANCED_SR: hd.sr.EnhancedSR,
}


def _read(ds: Dataset) -> ParsedResult:
    document_class = _DOCUMENT_CLASSES.get(str(ds.get("SOPClassUID", "")))
    if document_class is None or "ContentSequence" not in ds:
        raise ValueError("not a Comprehensive 3D, Comprehensive or Enhanced SR document")
    templates = ds.get("ContentTemplateSequence", [])
    if not templates or str(templates[0].get("TemplateIdentifier", "")) != "1500":
        raise ValueError("SR root is not a TID 1500 Measurement Report")

    doc = document_class.from_dataset(ds, copy=True)
    report = doc.content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise ValueError("SR content is not a TID 1500 Measurement Report")
    root = report[0]
    evaluations = find_content_items(root, name=C.QUALITATIVE_EVALUATIONS,
                                     value_type=ValueTypeValues.CONTAINER)
    if not evaluations:
        raise ValueError("SR has no report-level Qualitative Evaluations (the study decision)")
    summary = evaluations[0]

    films: list[tuple[int, ParsedGroup]] = []
    for group in report.get_planar_roi_measurement_groups():
        identifier = group.tracking_identifier or ""
        if not identifier.startswith(C.FILM_GROUP_PREFIX):
            continue
        roi = group.roi
        if roi is None:
            raise ValueError(f"film group {identifier!r} without an image region")
        images = [str(item.referenced_sop_instance_uid) for item in roi.ContentSequence
                  if isinstance(item, hd.sr.ImageContentItem)]
        films.append((_index(identifier), _parse(group[0], images)))
    for container in find_content_items(summary, name=C.NON_IMAGE_RESULT,
                                        value_type=ValueTypeValues.CONTAINER):
        identifier = _text(container, codes.DCM.TrackingIdentifier) or ""
        uids = [str(item.value) for item in find_content_items(
            container, name=C.NON_IMAGE_SOURCE, value_type=ValueTypeValues.UIDREF)]
        films.append((_index(identifier), _parse(container, uids)))
    films.sort(key=lambda pair: pair[0])

    study_group = _parse(summary, [uid for _, g in films for uid in g.referenced_sop_instance_uids])
    evidence = [
        str(inst.ReferencedSOPInstanceUID)
        for study in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in study.get("ReferencedSeriesSequence", [])
        for inst in series.get("ReferencedSOPSequence", [])
    ]
    return ParsedResult(
        sr_uid=str(ds.SOPInstanceUID),
        sr_series_instance_uid=str(ds.SeriesInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        outcome=study_group,
        model_name=_text(summary, codes.DCM.AlgorithmName),
        model_version=_text(summary, codes.DCM.AlgorithmVersion),
        films=[g for _, g in films],
        evidence_sop_instance_uids=evidence,
        escalation=_escalation(summary),
    )


def _escalation(summary: Dataset) -> Escalation | None:
    """The escalation reason and the prior result used (report-level evaluations), if any."""
    reason = _code(summary, C.ESCALATION_REASON)
    if reason is None:
        return None
    prior = find_content_items(summary, name=C.PRIOR_RESULT, value_type=ValueTypeValues.CONTAINER)
    item = prior[0] if prior else Dataset()
    date = _one(item, C.STUDY_DATE, ValueTypeValues.DATE) if prior else None
    said = _code(item, C.PRIOR_FINDING) if prior else None
    return Escalation(
        reason=C.escalation_from_code(reason), prior_study_uid=_uid(item, C.STUDY_UID) or "",
        prior_study_date=str(date.Date) if date is not None else "",
        prior_sr_uid=_uid(item, C.PRIOR_RESULT_SR),
        prior_finding="nodule_mass" if said is not None and C.same_code(said, C.NODULE_MASS_FLAG)
        else "suspicious")


def _uid(item: Dataset, name: Code) -> str | None:
    found = _one(item, name, ValueTypeValues.UIDREF) if "ContentSequence" in item else None
    return str(found.UID) if found is not None else None


def _index(identifier: str) -> int:
    if not identifier.startswith(C.FILM_GROUP_PREFIX):
        raise ValueError(f"not a cxr-triage film tracking identifier: {identifier!r}")
    return int(identifier[len(C.FILM_GROUP_PREFIX):])


def _parse(item: Dataset, referenced: list[str]) -> ParsedGroup:
    """Decision, score, threshold, operating point, reason and nodule/mass result of one
    container: a film's measurement group, a non-image result, or the report-level
    evaluations (the study; it alone states the nodule/mass point in words). A nodule/mass
    score without a flag item reads back as ``nodule_flag`` None: the model gives no flag."""
    decision_code = _code(item, C.TRIAGE_DECISION)
    if decision_code is None:
        raise ValueError("result without a triage decision")
    nodule_code = _code(item, C.NODULE_MASS_FLAG)
    return ParsedGroup(
        decision=C.decision_from_code(decision_code),
        score=_num(item, C.ABNORMALITY_SCORE),
        threshold=_num(item, C.OPERATING_POINT_THRESHOLD),
        operating_point=_text(item, C.OPERATING_POINT),
        reasons=tuple(C.reason_from_code(code) for code in _codes(item, C.NOT_ASSESSABLE_REASON)),
        reason_detail=_text(item, C.NOT_ASSESSABLE_DETAIL),
        referenced_sop_instance_uids=referenced,
        nodule_score=_num(item, C.NODULE_MASS_SCORE),
        nodule_threshold=_num(item, C.NODULE_MASS_THRESHOLD),
        nodule_flag=_present(nodule_code) if nodule_code is not None else None,
        nodule_point=_text(item, C.NODULE_MASS_POINT),
    )


def _present(code: Code) -> bool:
    """Present -> True, Absent -> False; KeyError for any other value."""
    if C.same_code(code, C.PRESENT):
        return True
    if C.same_code(code, C.ABSENT):
        return False
    raise KeyError(f"not Present/Absent: ({code.value}, {code.scheme_designator})")


def _one(item: Dataset, name: Code, value_type: ValueTypeValues) -> Dataset | None:
    found = find_content_items(item, name=name, value_type=value_type)
    return found[0] if found else None


def _text(item: Dataset, name: Code) -> str | None:
    found = _one(item, name, ValueTypeValues.TEXT)
    return str(found.value) if isinstance(found, hd.sr.TextContentItem) else None


def _num(item: Dataset, name: Code) -> float | None:
    """The exact value: Floating Point Value when present (Numeric Value is rounded for
    display), else Numeric Value (highdicom's NumContentItem.value)."""
    found = _one(item, name, ValueTypeValues.NUM)
    if not isinstance(found, hd.sr.NumContentItem) or not found.get("MeasuredValueSequence"):
        return None
    return float(found.value)


def _code(item: Dataset, name: Code) -> Code | None:
    found = _codes(item, name)
    return found[0] if found else None


def _codes(item: Dataset, name: Code) -> list[Code]:
    """The values of every CODE item named ``name`` among ``item``'s children, in order."""
    return [Code(value=str(c.value.value), scheme_designator=str(c.value.scheme_designator),
                 meaning=str(c.value.meaning))
            for c in find_content_items(item, name=name, value_type=ValueTypeValues.CODE)
            if isinstance(c, hd.sr.CodeContentItem)]
