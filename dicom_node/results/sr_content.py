"""The TID 1500 content items of the result SR, built with highdicom's templates.

One function per part of the tree that ``sr`` assembles (PS3.16 TID 1500 "Measurement
Report"): :func:`study_evaluations` (row 12, report-level Qualitative Evaluations, with
:func:`prior_result`, the prior result a study was escalated by),
:func:`film_group` (TID 1410, one per film), :func:`non_image_result` (a refused instance
that is not an image), :func:`image_library` (TID 1600), and :func:`separate_everywhere`.

NUM values: Numeric Value (what renderers show) is rounded to :data:`DISPLAY_DECIMALS`,
Floating Point Value holds the exact double (PS3.3 C.18.1.1), and ``sr_reader`` reads that,
so the round trip is exact. Codes are ``sr_codes``. Imports nothing above ``sr_codes``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.valuerep import DSfloat

from cxr_triage.contract.result import Decision, Escalation, NotAssessableReason, StudyResult
from cxr_triage.dicom_node.results import sr_codes as C

DISPLAY_DECIMALS = 4  # Numeric Value as shown; Floating Point Value keeps the exact double
_NON_IMAGE_MODALITIES = {"SEG", "SR", "DOC", "KO", "PR", "PLAN", "RWV", "REG", "FID",
                         "RTDOSE", "RTPLAN", "RTRECORD", "RTSTRUCT"}
_SOURCE = Code("260753009", "SCT", "Source")  # what highdicom's ImageLibrary names its entries
_CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS


@dataclass(frozen=True)
class Nodule:
    """The nodule/mass output of one film or of the study: score (calibrated P(nodule or
    mass), unit 1), the threshold it was called at (None if unknown) and the flag; ``flag``
    None (and no threshold) when the model gives the score without a flag (issue 22)."""

    score: float
    threshold: float | None
    flag: bool | None


def nodule_of(score: float | None, threshold: float | None, flag: bool | None) -> Nodule | None:
    """None when there is no nodule/mass result (a model without that output, a film not
    scored): then the SR carries no nodule/mass item at all. A score without a flag keeps its
    score and drops the threshold (nothing was called at it)."""
    if score is None:
        return None
    if flag is None:
        return Nodule(float(score), None, None)
    return Nodule(float(score), None if threshold is None else float(threshold), bool(flag))


@dataclass(frozen=True)
class FilmContent:
    """What one film's group (or non-image result) states: ``identifier`` is its tracking
    identifier ("cxr-triage film result N"), ``threshold`` None when none was applied."""

    identifier: str
    decision: Decision
    score: float | None
    reason: NotAssessableReason | None
    reason_detail: str | None
    op_name: str
    threshold: float | None
    nodule: Nodule | None = None


def study_reasons(study: StudyResult) -> list[NotAssessableReason]:
    """The distinct not-assessable reasons of a not-assessable study, in film order."""
    if study.decision is not Decision.NOT_ASSESSABLE:
        return []
    out: list[NotAssessableReason] = []
    for film in study.films:
        if film.reason is not None and film.reason not in out:
            out.append(film.reason)
    return out


def is_image(ds: Dataset) -> bool:
    """highdicom's test for a source image (pixel description, not an SR/PR/SEG/... object),
    written so that a header missing Modality does not raise."""
    return ("Rows" in ds and "Columns" in ds
            and str(ds.get("Modality", "")) not in _NON_IMAGE_MODALITIES)


def round_for_display(item: Dataset) -> None:
    """A NUM item's Numeric Value rounded to :data:`DISPLAY_DECIMALS`, its Floating Point
    Value exact (PS3.3 C.18.1.1)."""
    measured = item.MeasuredValueSequence[0]
    exact = float(measured.FloatingPointValue)
    shown = f"{exact:.{DISPLAY_DECIMALS}f}".rstrip("0").rstrip(".")
    measured.NumericValue = DSfloat("0" if shown in ("", "-", "-0") else shown)
    measured.FloatingPointValue = exact


def _num(name: Code, value: float) -> hd.sr.NumContentItem:
    """A unit-1 NUM: Numeric Value rounded for display, Floating Point Value exact."""
    item = hd.sr.NumContentItem(name=name, value=float(value), unit=C.NO_UNITS,
                                relationship_type=_CONTAINS)
    round_for_display(item)
    return item


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=_CONTAINS)


def _code(name: Code, value: Code) -> hd.sr.CodeContentItem:
    return hd.sr.CodeContentItem(name=name, value=value, relationship_type=_CONTAINS)


def _container(name: Code | hd.sr.CodedConcept) -> hd.sr.ContainerContentItem:
    return hd.sr.ContainerContentItem(name=name, is_content_continuous=False,
                                      relationship_type=_CONTAINS)


def study_evaluations(
    study: StudyResult,
    algorithm: hd.sr.AlgorithmIdentification,
    op_name: str,
    threshold: float | None,
    non_image: Sequence[hd.sr.ContainerContentItem],
) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12, report-level Qualitative Evaluations: the study's decision first, its
    not-assessable reasons, score, threshold and operating point, the nodule/mass flag, score,
    threshold and operating point in words (:data:`sr_codes.NODULE_MASS_POINT`: its validation
    figures, or why no flag is given), the algorithm, and the results of refused non-image
    instances."""
    items: list[hd.sr.ContentItem] = [_code(C.TRIAGE_DECISION, C.DECISION_CODES[study.decision])]
    if study.escalation is not None:
        items.append(_code(C.ESCALATION_REASON, C.ESCALATION_CODES[study.escalation.reason]))
    items += [_code(C.NOT_ASSESSABLE_REASON, C.REASON_CODES[r]) for r in study_reasons(study)]
    nodule = nodule_of(study.nodule_score, _study_nodule_threshold(study), study.nodule_flag)
    if nodule is not None and nodule.flag is not None:
        items.append(_code(C.NODULE_MASS_FLAG, C.PRESENT if nodule.flag else C.ABSENT))
    if study.score is not None and math.isfinite(study.score):
        items.append(_num(C.ABNORMALITY_SCORE, study.score))
    if threshold is not None:
        items.append(_num(C.OPERATING_POINT_THRESHOLD, threshold))
    items.append(_text(C.OPERATING_POINT, op_name))
    if nodule is not None:
        if math.isfinite(nodule.score):
            items.append(_num(C.NODULE_MASS_SCORE, nodule.score))
        if nodule.threshold is not None:
            items.append(_num(C.NODULE_MASS_THRESHOLD, nodule.threshold))
        point = study_nodule_point(study)
        if point:
            items.append(_text(C.NODULE_MASS_POINT, point))
    items += [item for item in algorithm if isinstance(item, hd.sr.ContentItem)]
    items += list(non_image)
    if study.escalation is not None:
        items.append(prior_result(study.escalation))
    container = _container(C.QUALITATIVE_EVALUATIONS)
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def prior_result(escalation: Escalation) -> hd.sr.ContainerContentItem:
    """The prior result a study was escalated by: its Study Instance UID, Study Date (when
    known), this node's SR of it (when known) and what that result said."""
    items: list[hd.sr.ContentItem] = [hd.sr.UIDRefContentItem(
        name=C.STUDY_UID, value=escalation.prior_study_uid, relationship_type=_CONTAINS)]
    if escalation.prior_study_date:
        items.append(hd.sr.DateContentItem(
            name=C.STUDY_DATE, value=dt.datetime.strptime(escalation.prior_study_date, "%Y%m%d").date(),
            relationship_type=_CONTAINS))
    if escalation.prior_sr_uid:
        items.append(hd.sr.UIDRefContentItem(name=C.PRIOR_RESULT_SR, value=escalation.prior_sr_uid,
                                             relationship_type=_CONTAINS))
    said = C.DECISION_CODES[Decision.SUSPICIOUS] if escalation.prior_finding == "suspicious" \
        else C.NODULE_MASS_FLAG
    items.append(_code(C.PRIOR_FINDING, said))
    container = _container(C.PRIOR_RESULT)
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def study_nodule_point(study: StudyResult) -> str | None:
    """The nodule/mass point in words that the study's films were scored at (one per model run;
    ``FilmResult.nodule_point``), None when no film states one."""
    return next((f.nodule_point for f in study.films if f.nodule_score is not None and f.nodule_point), None)


def _study_nodule_threshold(study: StudyResult) -> float | None:
    """The nodule/mass threshold the study's films were called at (one per model run)."""
    return next((float(f.nodule_threshold) for f in study.films
                 if f.nodule_score is not None and f.nodule_threshold is not None), None)


def non_image_result(film: FilmContent, source: Dataset) -> hd.sr.ContainerContentItem:
    """A refused instance that is not an image (no region to draw, so no measurement group):
    its tracking identifier, decision, reason, and the instance by UID (an IMAGE item may not
    point at it: dcmtk rejects the document)."""
    items: list[hd.sr.ContentItem] = [
        hd.sr.TextContentItem(name=codes.DCM.TrackingIdentifier, value=film.identifier,
                              relationship_type=hd.sr.RelationshipTypeValues.HAS_OBS_CONTEXT),
        _code(C.TRIAGE_DECISION, C.DECISION_CODES[film.decision]),
    ]
    if film.reason is not None:
        items.append(_code(C.NOT_ASSESSABLE_REASON, C.REASON_CODES[film.reason]))
    if film.threshold is not None:
        items.append(_num(C.OPERATING_POINT_THRESHOLD, film.threshold))
    items.append(_text(C.OPERATING_POINT, film.op_name))
    if film.reason_detail:
        items.append(_text(C.NOT_ASSESSABLE_DETAIL, film.reason_detail))
    items.append(hd.sr.UIDRefContentItem(name=C.NON_IMAGE_SOURCE, value=str(source.SOPInstanceUID),
                                         relationship_type=_CONTAINS))
    container = _container(C.NON_IMAGE_RESULT)
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def film_group(film: FilmContent, image: Dataset, algorithm: hd.sr.AlgorithmIdentification,
               ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """One TID 1410 group for a film: its decision, score and threshold (and the nodule/mass
    score, threshold and flag when the model has that output; the score alone when the model
    gives no flag: the report level says why), on an image region that
    covers the film's full image area (the model reads the whole film; OHIF attaches a group
    to its image only through such a region)."""
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=film.identifier),
        referenced_region=_whole_image_region(image),
        finding_type=C.FINDING_FOR_DECISION[film.decision],
        finding_sites=[hd.sr.FindingSite(C.FINDING_SITE_CHEST)],
        algorithm_id=algorithm,
        measurements=_film_measurements(film),
        qualitative_evaluations=_film_evaluations(film),
    )
    texts = [(C.OPERATING_POINT, film.op_name)]
    if film.decision is Decision.NOT_ASSESSABLE and film.reason_detail:
        texts.append((C.NOT_ASSESSABLE_DETAIL, film.reason_detail))
    for name, value in texts:
        group[0].ContentSequence.append(_text(name, value))
    return group


def _film_measurements(film: FilmContent) -> list[hd.sr.Measurement]:
    """Score, threshold and the nodule/mass score and threshold, those that are known (unit 1)."""
    values: list[tuple[Code, float]] = []
    if film.score is not None and math.isfinite(film.score):
        values.append((C.ABNORMALITY_SCORE, float(film.score)))
    if film.threshold is not None:
        values.append((C.OPERATING_POINT_THRESHOLD, float(film.threshold)))
    nodule = film.nodule
    if nodule is not None and math.isfinite(nodule.score):
        values.append((C.NODULE_MASS_SCORE, nodule.score))
    if nodule is not None and nodule.threshold is not None:
        values.append((C.NODULE_MASS_THRESHOLD, nodule.threshold))
    measurements = [hd.sr.Measurement(name=name, value=value, unit=C.NO_UNITS)
                    for name, value in values]
    for measurement in measurements:
        round_for_display(measurement[0])
    return measurements


def _film_evaluations(film: FilmContent) -> list[hd.sr.QualitativeEvaluation]:
    """The decision, Abnormal present/absent or the not-assessable reason, the nodule/mass flag."""
    evaluations = [hd.sr.QualitativeEvaluation(C.TRIAGE_DECISION, C.DECISION_CODES[film.decision])]
    if film.decision is Decision.SUSPICIOUS:
        evaluations.append(hd.sr.QualitativeEvaluation(C.FINDING_ABNORMAL, C.PRESENT))
    elif film.decision is Decision.LIKELY_NORMAL:
        evaluations.append(hd.sr.QualitativeEvaluation(C.FINDING_ABNORMAL, C.ABSENT))
    elif film.reason is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(C.NOT_ASSESSABLE_REASON,
                                                       C.REASON_CODES[film.reason]))
    if film.nodule is not None and film.nodule.flag is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(
            C.NODULE_MASS_FLAG, C.PRESENT if film.nodule.flag else C.ABSENT))
    return evaluations


def _whole_image_region(image: Dataset) -> hd.sr.ImageRegion:
    """A POLYLINE around the whole image, in pixel-edge coordinates (PS3.3 C.18.6.1.1)."""
    rows, columns = int(image.Rows), int(image.Columns)
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array([[0.0, 0.0], [columns, 0.0], [columns, rows], [0.0, rows],
                               [0.0, 0.0]]),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=image.SOPClassUID,
            referenced_sop_instance_uid=image.SOPInstanceUID,
        ),
    )


def image_library(images: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library: one group listing every source image (descriptors left out:
    highdicom's need attributes real CR/DX headers lack, e.g. Patient Orientation)."""
    group = _container(codes.DCM.ImageLibraryGroup)
    group.ContentSequence = hd.sr.ContentSequence([
        hd.sr.ImageContentItem(
            name=_SOURCE,
            referenced_sop_class_uid=img.SOPClassUID,
            referenced_sop_instance_uid=img.SOPInstanceUID,
            relationship_type=_CONTAINS)
        for img in images
    ])
    library = _container(codes.DCM.ImageLibrary)
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library


def separate_everywhere(item: Dataset) -> None:
    """ContinuityOfContent SEPARATE on every container: renderers then label each item with
    its concept name instead of running the values together (highdicom writes CONTINUOUS)."""
    if item.get("ValueType") == "CONTAINER":
        item.ContinuityOfContent = "SEPARATE"
    for child in item.get("ContentSequence", []):
        separate_everywhere(child)
