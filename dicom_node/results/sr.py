"""The study's triage result as a DICOM Structured Report (TID 1500, Comprehensive 3D SR).

Built with highdicom's templates, never by hand, so the tree is conformant by construction:

    MeasurementReport (TID 1500), every container ContinuityOfContent SEPARATE
      Qualitative Evaluations (TID 1500 row 12; first, so a reader sees the decision first)
        AI triage decision (CODE) of the study, its not-assessable reasons (CODE),
        [AI nodule/mass flag (CODE)], study score and threshold (NUM), operating point
        (TEXT), [nodule/mass score and threshold (NUM)], Algorithm Identification
        Non-image instance result (CONTAINER) per refused instance that is not an image
      observation context: device observer (the model, a fixed UID per model version)
      procedure reported: the source's Procedure Code Sequence, else LN 43468-8
      Image Library: every source image
      Imaging Measurements
        Measurement Group (TID 1410) "cxr-triage film result N" -> film N
          Image Region: POLYLINE around the film's full image area (OHIF attaches the group
          to the film through it), Finding (normal / abnormal), Finding Site chest,
          Algorithm Identification (TID 4019), score and operating-point threshold (NUM,
          unit 1), triage decision (CODE), Abnormal = Present / Absent, or the
          not-assessable reason (CODE + TEXT); [nodule/mass score and threshold (NUM),
          AI nodule/mass flag = Present / Absent (CODE)]

[...]: only when the model has a nodule/mass output (``FilmResult.nodule_score`` set); the
flag is an added finding beside the decision, never a change of it.

NUM values: Numeric Value (what renderers show) is rounded to 4 decimals, Floating Point Value
holds the exact double (PS3.3 C.18.1.1), and ``sr_reader`` reads that, so the round trip is exact.

Codes are in ``sr_codes`` (docs/conformance.md, "Result codes"). The header copies patient and study from
the sources so the PACS files the SR into the source study, in its own cautionary series.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from pydicom.valuerep import DSfloat

from cxr_triage.contract.model_file import ModelMetadata
from cxr_triage.contract.result import Decision, NotAssessableReason, StudyResult
from cxr_triage.dicom_node.results import sr_codes as C

SERIES_DESCRIPTION = "AI triage - research output, not for diagnosis"  # decision unknown
SERIES_PREFIX = "AI triage"
DISPLAY_DECIMALS = 4  # Numeric Value as shown; Floating Point Value keeps the exact double
_LO_MAX = 64
_HEADER_LABELS = {
    Decision.SUSPICIOUS: "SUSPICIOUS",
    Decision.LIKELY_NORMAL: "LIKELY NORMAL",
    Decision.NOT_ASSESSABLE: "NOT ASSESSABLE",
}
DEFAULT_SERIES_NUMBER = 990
SOFTWARE_NAME = "cxr-triage"

# Type 2 patient/study attributes highdicom reads from the first source: present-but-empty
# is valid DICOM, absent would fail the build (real headers omit them, e.g. the NIH samples).
_TYPE2_COPIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)
_NON_IMAGE_MODALITIES = {"SEG", "SR", "DOC", "KO", "PR", "PLAN", "RWV", "REG", "FID",
                         "RTDOSE", "RTPLAN", "RTRECORD", "RTSTRUCT"}
_AGE = re.compile(r"\d{3}[DWMY]")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def device_uid(meta: ModelMetadata) -> str:
    """A UID fixed for a model name and version (IHE AIR: change it when the model changes)."""
    return str(generate_uid(entropy_srcs=["cxr-triage device", meta.name, meta.version]))


def study_reasons(study: StudyResult) -> list[NotAssessableReason]:
    """The distinct not-assessable reasons of a not-assessable study, in film order."""
    if study.decision is not Decision.NOT_ASSESSABLE:
        return []
    out: list[NotAssessableReason] = []
    for film in study.films:
        if film.reason is not None and film.reason not in out:
            out.append(film.reason)
    return out


def header_description(prefix: str, decision: Decision,
                       reasons: Sequence[NotAssessableReason] = ()) -> str:
    """A Series Description (LO, at most 64 characters) that carries the decision, e.g.
    "AI triage: SUSPICIOUS - research, not for diagnosis", so that PACS lists, routing
    rules and viewers that never open the content tree still show it."""
    label = _HEADER_LABELS[decision]
    names = [C.REASON_CODES[r].meaning.lower() for r in reasons]
    tails = (" - research, not for diagnosis", " - not for diagnosis")
    shown = [", ".join(names)] if names else []
    if len(names) > 1:
        shown.append(f"{names[0]}, +{len(names) - 1}")
    # the reason matters more than the word "research"; the decision most of all
    candidates = [f"{prefix}: {label} ({r}){t}" for r in shown for t in tails]
    candidates += [f"{prefix}: {label}{t}" for t in tails]
    for text in candidates:
        if len(text) <= _LO_MAX:
            return text
    return candidates[-1][:_LO_MAX]


@dataclass(frozen=True)
class Amendment:
    """The earlier result of the same study that a new one replaces (more images arrived, or
    an image changed, after it was made): its SR and its summary-image series. The amended
    SR goes into the same series with the next Instance Number and names the replaced SR in
    its Predecessor Documents Sequence; the summary images continue their series."""

    result_id: int
    sr_sop_instance_uid: str
    sr_sop_class_uid: str
    sr_series_uid: str
    sr_instance_number: int
    sc_series_uid: str | None = None
    sc_last_instance_number: int = 0

    def predecessor(self, study_uid: str) -> Dataset:
        """The replaced SR as highdicom's ``previous_versions`` wants it (UIDs only)."""
        ds = Dataset()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = self.sr_series_uid
        ds.SOPClassUID = self.sr_sop_class_uid
        ds.SOPInstanceUID = self.sr_sop_instance_uid
        return ds


#: Completion Flag Description (LO) of an amended result: the header says it supersedes.
AMENDED_COMPLETION = "Amended: supersedes the earlier AI triage result of this study"
AMENDED_SUFFIX = " (amended)"   # after the Series Description prefix: "AI triage (amended): ..."


def build_result_sr(
    study: StudyResult,
    sources: Sequence[Dataset],
    meta: ModelMetadata,
    *,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = DEFAULT_SERIES_NUMBER,
    instance_number: int = 1,
    institution_name: str | None = None,
    institutional_department_name: str | None = None,
    amends: Amendment | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The result SR for one study.

    ``sources`` are the received instances (headers suffice; pixel data is not copied);
    every one is referenced as evidence, and each film in ``study.films`` must match one by
    SOP Instance UID (ValueError otherwise, or when a source is from another study).
    New series/SOP Instance UIDs unless given: build once and keep the file, so that
    retries resend the same instance (the PACS then keeps one copy).

    ``amends``: the earlier result this one replaces. The SR then joins that result's series
    (``series_uid`` and ``instance_number`` are ignored) with the next Instance Number, names
    the replaced SR in its Predecessor Documents Sequence, and says so in its Completion Flag
    Description and Series Description ("AI triage (amended): ...").
    """
    prefix = SERIES_PREFIX
    previous: list[Dataset] | None = None
    if amends is not None:
        series_uid = amends.sr_series_uid
        instance_number = amends.sr_instance_number + 1
        prefix = SERIES_PREFIX + AMENDED_SUFFIX
        previous = [amends.predecessor(study.study_instance_uid)]
    headers = source_headers(sources)
    if not headers:
        raise ValueError("build_result_sr needs at least one source dataset")
    foreign = {h.StudyInstanceUID for h in headers} - {study.study_instance_uid}
    if foreign:
        raise ValueError(
            f"sources belong to other studies than {study.study_instance_uid}: {sorted(foreign)}"
        )
    by_uid = {str(h.SOPInstanceUID): h for h in headers}
    missing = [f.sop_instance_uid for f in study.films if str(f.sop_instance_uid) not in by_uid]
    if missing:
        raise ValueError(f"films without a matching source dataset: {missing}")

    op_name, threshold = _operating_point(study, meta)
    algorithm = hd.sr.AlgorithmIdentification(
        name=meta.name,
        version=meta.version,
        manufacturer=meta.manufacturer or None,
        parameters=[f"operating_point={op_name}"]
        + ([f"threshold={threshold!r}"] if threshold is not None else []),
    )
    groups: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
                 | hd.sr.MeasurementsAndQualitativeEvaluations] = []
    non_image: list[hd.sr.ContainerContentItem] = []
    for index, film in enumerate(study.films, start=1):
        source = by_uid[str(film.sop_instance_uid)]
        film_op = film.operating_point or op_name
        film_threshold = film.threshold if film.threshold is not None else threshold
        if film.decision is Decision.NOT_ASSESSABLE and film.threshold is None:
            film_threshold = None  # no threshold was applied; OHIF would show it as the label
        if _is_image(source):
            groups.append(_film_group(
                f"{C.FILM_GROUP_PREFIX}{index}", film.decision, film.score, film.reason,
                film.reason_detail, source, algorithm, film_op, film_threshold,
                nodule=_nodule_of(film.nodule_score, film.nodule_threshold, film.nodule_flag)))
        else:
            non_image.append(_non_image_result(
                f"{C.FILM_GROUP_PREFIX}{index}", film.decision, film.reason,
                film.reason_detail, source, film_op, film_threshold))
    if not groups:
        # No film is an image: nothing to draw a region on, but TID 1500 (and highdicom)
        # need one group. The study's decision stays in the report-level evaluations.
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(),
                                                         identifier=C.STUDY_GROUP_ID),
            finding_sites=[hd.sr.FindingSite(C.FINDING_SITE_CHEST)],
            algorithm_id=algorithm,
        ))

    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(meta),
            name=f"{meta.name} {meta.version}",
            manufacturer_name=meta.manufacturer or None,
            model_name=meta.name,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_procedures(headers),
        imaging_measurements=groups,
    )
    images = [h for h in headers if _is_image(h)]
    if images:
        report[0].ContentSequence.insert(len(report[0].ContentSequence) - 1,
                                         _image_library(images))
    # The study's decision first: TID 1500 is "order non-significant", and readers of a
    # rendered SR (dsr2html, a PACS text view) see the top of the document first.
    report[0].ContentSequence.insert(0, _study_evaluations(
        study, algorithm, op_name, threshold, non_image))
    _separate_everywhere(report[0])
    from cxr_triage import __version__ as software_version

    with warnings.catch_warnings():
        # highdicom warns about single-component person names, quoting the patient's name:
        # that would put PHI into the logs.
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        sr = hd.sr.Comprehensive3DSR(
            evidence=headers,
            content=report,
            series_instance_uid=series_uid or hd.UID(),
            series_number=series_number,
            sop_instance_uid=sop_instance_uid or hd.UID(),
            instance_number=instance_number,
            manufacturer=meta.manufacturer or SOFTWARE_NAME,
            is_complete=True,
            is_final=False,
            is_verified=False,
            institution_name=institution_name,
            institutional_department_name=institutional_department_name,
            series_description=header_description(prefix, study.decision, study_reasons(study)),
            previous_versions=previous,
            manufacturer_model_name=SOFTWARE_NAME,
            software_versions=f"cxr-triage {software_version}",
            coding_schemes=[
                CodingSchemeIdentificationItem(
                    designator=C.SCHEME,
                    name=C.SCHEME_NAME,
                    version=C.SCHEME_VERSION,
                    responsible_organization=C.SCHEME_ORGANIZATION,
                )
            ],
        )
    set_series_datetime(sr)
    if amends is not None:
        sr.CompletionFlagDescription = AMENDED_COMPLETION
    # Software Versions (0018,1020) names the software and the model that made the result
    # (multi-valued: highdicom takes a single value); the IHE contributing equipment repeats the model.
    sr.add_new(0x00181020, "LO", software_versions(meta))  # Software Versions
    add_ihe_algorithm_equipment(sr, meta)
    return sr


def software_versions(meta: ModelMetadata) -> list[str]:
    """The Software Versions values of every object the node writes (SR and summary image):
    ``["cxr-triage <package version>", "<model name> <model version>"]``."""
    from cxr_triage import __version__

    return [f"cxr-triage {__version__}", f"{meta.name} {meta.version}"]


def set_series_datetime(ds: Dataset) -> None:
    """Series Date/Time: when this result series was made (its Content Date/Time)."""
    ds.SeriesDate = ds.get("ContentDate") or ds.get("InstanceCreationDate")
    ds.SeriesTime = ds.get("ContentTime") or ds.get("InstanceCreationTime")


_SOURCE = Code("260753009", "SCT", "Source")  # what highdicom's ImageLibrary names its entries


def _image_library(images: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library: one group listing every source image (descriptors left out:
    highdicom's need attributes real CR/DX headers lack, e.g. Patient Orientation)."""
    group = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibraryGroup, is_content_continuous=False,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    group.ContentSequence = hd.sr.ContentSequence([
        hd.sr.ImageContentItem(
            name=_SOURCE,
            referenced_sop_class_uid=img.SOPClassUID,
            referenced_sop_instance_uid=img.SOPInstanceUID,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for img in images
    ])
    library = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibrary, is_content_continuous=False,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library


def _separate_everywhere(item: Dataset) -> None:
    """ContinuityOfContent SEPARATE on every container: renderers then label each item with
    its concept name instead of running the values together (highdicom writes CONTINUOUS)."""
    if item.get("ValueType") == "CONTAINER":
        item.ContinuityOfContent = "SEPARATE"
    for child in item.get("ContentSequence", []):
        _separate_everywhere(child)


def _num(name: Code, value: float) -> hd.sr.NumContentItem:
    """A unit-1 NUM: Numeric Value rounded for display, Floating Point Value exact."""
    item = hd.sr.NumContentItem(name=name, value=float(value), unit=C.NO_UNITS,
                                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    _round_for_display(item)
    return item


def _round_for_display(item: Dataset) -> None:
    measured = item.MeasuredValueSequence[0]
    exact = float(measured.FloatingPointValue)
    shown = f"{exact:.{DISPLAY_DECIMALS}f}".rstrip("0").rstrip(".")
    measured.NumericValue = DSfloat("0" if shown in ("", "-", "-0") else shown)
    measured.FloatingPointValue = exact


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value,
                                 relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _code(name: Code, value: Code) -> hd.sr.CodeContentItem:
    return hd.sr.CodeContentItem(name=name, value=value,
                                 relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _study_evaluations(
    study: StudyResult,
    algorithm: hd.sr.AlgorithmIdentification,
    op_name: str,
    threshold: float | None,
    non_image: Sequence[hd.sr.ContainerContentItem],
) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12, report-level Qualitative Evaluations: the study's decision first, its
    not-assessable reasons, score, threshold and operating point, the algorithm, and the
    results of refused non-image instances."""
    container = hd.sr.ContainerContentItem(
        name=C.QUALITATIVE_EVALUATIONS, is_content_continuous=False,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    items: list[hd.sr.ContentItem] = [_code(C.TRIAGE_DECISION, C.DECISION_CODES[study.decision])]
    items += [_code(C.NOT_ASSESSABLE_REASON, C.REASON_CODES[r]) for r in study_reasons(study)]
    nodule = _nodule_of(study.nodule_score, _study_nodule_threshold(study), study.nodule_flag)
    if nodule is not None:
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
    items += [item for item in algorithm if isinstance(item, hd.sr.ContentItem)]
    items += list(non_image)
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _non_image_result(
    identifier: str,
    decision: Decision,
    reason: NotAssessableReason | None,
    reason_detail: str | None,
    source: Dataset,
    op_name: str,
    threshold: float | None,
) -> hd.sr.ContainerContentItem:
    """A refused instance that is not an image (no region to draw, so no measurement group):
    its tracking identifier, decision, reason, and the instance by UID (an IMAGE item may not
    point at it: dcmtk rejects the document)."""
    container = hd.sr.ContainerContentItem(
        name=C.NON_IMAGE_RESULT, is_content_continuous=False,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    items: list[hd.sr.ContentItem] = [
        hd.sr.TextContentItem(name=codes.DCM.TrackingIdentifier, value=identifier,
                              relationship_type=hd.sr.RelationshipTypeValues.HAS_OBS_CONTEXT),
        _code(C.TRIAGE_DECISION, C.DECISION_CODES[decision]),
    ]
    if reason is not None:
        items.append(_code(C.NOT_ASSESSABLE_REASON, C.REASON_CODES[reason]))
    if threshold is not None:
        items.append(_num(C.OPERATING_POINT_THRESHOLD, threshold))
    items.append(_text(C.OPERATING_POINT, op_name))
    if reason_detail:
        items.append(_text(C.NOT_ASSESSABLE_DETAIL, reason_detail))
    items.append(hd.sr.UIDRefContentItem(
        name=C.NON_IMAGE_SOURCE, value=str(source.SOPInstanceUID),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _film_group(
    identifier: str,
    decision: Decision,
    score: float | None,
    reason: NotAssessableReason | None,
    reason_detail: str | None,
    image: Dataset,
    algorithm: hd.sr.AlgorithmIdentification,
    op_name: str,
    threshold: float | None,
    *,
    nodule: _Nodule | None = None,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """One TID 1410 group for a film: its decision, score and threshold (and the nodule/mass
    score, threshold and flag when the model has that output), on an image region that
    covers the film's full image area (the model reads the whole film; OHIF attaches a group
    to its image only through such a region)."""
    values: list[tuple[Code, float]] = []
    if score is not None and math.isfinite(score):
        values.append((C.ABNORMALITY_SCORE, float(score)))
    if threshold is not None:
        values.append((C.OPERATING_POINT_THRESHOLD, float(threshold)))
    if nodule is not None and math.isfinite(nodule.score):
        values.append((C.NODULE_MASS_SCORE, nodule.score))
    if nodule is not None and nodule.threshold is not None:
        values.append((C.NODULE_MASS_THRESHOLD, nodule.threshold))
    measurements = [hd.sr.Measurement(name=name, value=value, unit=C.NO_UNITS)
                    for name, value in values]
    for measurement in measurements:
        _round_for_display(measurement[0])
    evaluations = [hd.sr.QualitativeEvaluation(C.TRIAGE_DECISION, C.DECISION_CODES[decision])]
    if decision is Decision.SUSPICIOUS:
        evaluations.append(hd.sr.QualitativeEvaluation(C.FINDING_ABNORMAL, C.PRESENT))
    elif decision is Decision.LIKELY_NORMAL:
        evaluations.append(hd.sr.QualitativeEvaluation(C.FINDING_ABNORMAL, C.ABSENT))
    elif reason is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(C.NOT_ASSESSABLE_REASON,
                                                       C.REASON_CODES[reason]))
    if nodule is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(
            C.NODULE_MASS_FLAG, C.PRESENT if nodule.flag else C.ABSENT))
    rows, columns = int(image.Rows), int(image.Columns)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        # pixel-edge coordinates (PS3.3 C.18.6.1.1): the outline of the whole image
        graphic_data=np.array([[0.0, 0.0], [columns, 0.0], [columns, rows], [0.0, rows],
                               [0.0, 0.0]]),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=image.SOPClassUID,
            referenced_sop_instance_uid=image.SOPInstanceUID,
        ),
    )
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=identifier),
        referenced_region=region,
        finding_type=C.FINDING_FOR_DECISION[decision],
        finding_sites=[hd.sr.FindingSite(C.FINDING_SITE_CHEST)],
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )
    texts = [(C.OPERATING_POINT, op_name)]
    if decision is Decision.NOT_ASSESSABLE and reason_detail:
        texts.append((C.NOT_ASSESSABLE_DETAIL, reason_detail))
    for name, value in texts:
        group[0].ContentSequence.append(_text(name, value))
    return group


@dataclass(frozen=True)
class _Nodule:
    """The nodule/mass output of one film or of the study: score (calibrated P(nodule or
    mass), unit 1), the threshold it was called at (None if unknown) and the flag."""

    score: float
    threshold: float | None
    flag: bool


def _nodule_of(score: float | None, threshold: float | None, flag: bool | None) -> _Nodule | None:
    """None when there is no nodule/mass result (a model without that output, a film not
    scored): then the SR carries no nodule/mass item at all."""
    if score is None or flag is None:
        return None
    return _Nodule(float(score), None if threshold is None else float(threshold), bool(flag))


def _study_nodule_threshold(study: StudyResult) -> float | None:
    """The nodule/mass threshold the study's films were called at (one per model run)."""
    return next((float(f.nodule_threshold) for f in study.films
                 if f.nodule_score is not None and f.nodule_threshold is not None), None)


def _is_image(ds: Dataset) -> bool:
    """highdicom's test for a source image (pixel description, not an SR/PR/SEG/... object),
    written so that a header missing Modality does not raise."""
    return ("Rows" in ds and "Columns" in ds
            and str(ds.get("Modality", "")) not in _NON_IMAGE_MODALITIES)


def _operating_point(study: StudyResult, meta: ModelMetadata) -> tuple[str, float | None]:
    """The operating point the films were decided at (the model's default if none says)."""
    for film in study.films:
        if film.operating_point and film.threshold is not None:
            return film.operating_point, float(film.threshold)
    try:
        return meta.threshold(None)
    except KeyError:
        return meta.default_operating_point, None


def _procedures(headers: Sequence[Dataset]) -> list[Code | hd.sr.CodedConcept]:
    """Procedure reported: the sources' Procedure Code Sequence, else XR unspecified."""
    seen: dict[tuple[str, str], hd.sr.CodedConcept] = {}
    for h in headers:
        for item in h.get("ProcedureCodeSequence", []):
            try:
                concept = hd.sr.CodedConcept.from_dataset(item)
            except (AttributeError, TypeError, ValueError):
                continue
            seen.setdefault((concept.value, concept.scheme_designator), concept)
    return list(seen.values()) or [C.PROCEDURE_XR_UNSPECIFIED]


def source_headers(sources: Sequence[Dataset]) -> list[Dataset]:
    """Pixel-free copies of the sources (deduplicated by SOP Instance UID) with the Type 2
    patient/study attributes highdicom copies made present."""
    out: dict[str, Dataset] = {}
    for src in sources:
        uid = str(src.SOPInstanceUID)
        if uid in out:
            continue
        header = Dataset()
        for elem in src:
            if elem.keyword not in _PIXEL_KEYWORDS:
                header.add(elem)
        for keyword in _TYPE2_COPIED:
            if keyword not in header or header[keyword].value is None:
                setattr(header, keyword, "")
        _drop_invalid_copied_values(header)
        out[uid] = header
    return list(out.values())


def _drop_invalid_copied_values(header: Dataset) -> None:
    """Real headers carry values their VR forbids (NIH: Patient's Age "62"); copied into the
    SR they would make it fail validation. Type 3 ones are dropped, Type 2 ones emptied,
    rather than guessed (is "62" years or months?)."""
    age = header.get("PatientAge")
    if age is not None and not _AGE.fullmatch(str(age)):
        del header.PatientAge
    if str(header.get("PatientSex", "")) not in {"M", "F", "O", ""}:
        header.PatientSex = ""


def add_ihe_algorithm_equipment(sr: Dataset, meta: ModelMetadata) -> None:
    """IHE AI Results: the algorithm as Contributing Equipment ("Processing Algorithm"), with the
    model's name (Manufacturer's Model Name) and version (Software Versions); the SR and the
    summary image both carry it.

    highdicom's ContributingEquipment accepts only CID 7005 purposes, hence pydicom here.
    """
    purpose = Dataset()
    purpose.CodeValue = C.IHE_PROCESSING_ALGORITHM.value
    purpose.CodingSchemeDesignator = C.IHE_PROCESSING_ALGORITHM.scheme_designator
    purpose.CodeMeaning = C.IHE_PROCESSING_ALGORITHM.meaning
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = meta.manufacturer or SOFTWARE_NAME
    item.ManufacturerModelName = meta.name
    item.SoftwareVersions = meta.version
    item.DeviceUID = device_uid(meta)
    item.ContributionDescription = "AI chest X-ray triage (research tool, not for diagnosis)"
    if "ContributingEquipmentSequence" not in sr:
        sr.ContributingEquipmentSequence = []
    sr.ContributingEquipmentSequence.append(item)
