"""The study's triage result as a DICOM Structured Report (TID 1500, Comprehensive 3D SR).

Built with highdicom's templates, never by hand, so the tree is conformant by construction:

    MeasurementReport (TID 1500)
      observation context: device observer (the model, a fixed UID per model version)
      procedure reported: the source's Procedure Code Sequence, else LN 43468-8
      Imaging Measurements
        Measurement Group (TID 1501) "cxr-triage study result"  -> every source image
        Measurement Group (TID 1501) "cxr-triage film result N" -> film N
          Finding (normal / abnormal), Finding Site chest, Algorithm Identification (TID 4019)
          score and operating-point threshold (NUM, unit 1), triage decision (CODE),
          Abnormal = Present / Absent, or the not-assessable reason (CODE + TEXT)

Codes are in ``sr_codes`` (docs/conformance.md, "Result codes"). The header copies patient and study from
the sources so the PACS files the SR into the source study, in its own cautionary series.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from cxr_triage.contract.model_file import ModelMetadata
from cxr_triage.contract.result import Decision, NotAssessableReason, StudyResult
from cxr_triage.dicom_node.results import sr_codes as C

SERIES_DESCRIPTION = "AI triage - research output, not for diagnosis"
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
) -> hd.sr.Comprehensive3DSR:
    """The result SR for one study.

    ``sources`` are the received instances (headers suffice; pixel data is not copied);
    every one is referenced as evidence, and each film in ``study.films`` must match one by
    SOP Instance UID (ValueError otherwise, or when a source is from another study).
    New series/SOP Instance UIDs unless given: build once and keep the file, so that
    retries resend the same instance (the PACS then keeps one copy).
    """
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
    groups = [
        _group(
            C.STUDY_GROUP_ID, study.decision, study.score, None, None,
            headers, algorithm, op_name, threshold,
        )
    ]
    for index, film in enumerate(study.films, start=1):
        groups.append(
            _group(
                f"{C.FILM_GROUP_PREFIX}{index}", film.decision, film.score,
                film.reason, film.reason_detail, [by_uid[str(film.sop_instance_uid)]],
                algorithm, film.operating_point or op_name,
                film.threshold if film.threshold is not None else threshold,
            )
        )

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
            series_description=SERIES_DESCRIPTION,
            manufacturer_model_name=SOFTWARE_NAME,
            software_versions=str(software_version),
            coding_schemes=[
                CodingSchemeIdentificationItem(
                    designator=C.SCHEME,
                    name=C.SCHEME_NAME,
                    version=C.SCHEME_VERSION,
                    responsible_organization=C.SCHEME_ORGANIZATION,
                )
            ],
        )
    _add_ihe_algorithm_equipment(sr, meta)
    return sr


def _group(
    identifier: str,
    decision: Decision,
    score: float | None,
    reason: NotAssessableReason | None,
    reason_detail: str | None,
    images: Sequence[Dataset],
    algorithm: hd.sr.AlgorithmIdentification,
    op_name: str,
    threshold: float | None,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """One TID 1501 group: the decision, score and threshold for the referenced images."""
    measurements = []
    if score is not None and math.isfinite(score):
        measurements.append(hd.sr.Measurement(name=C.ABNORMALITY_SCORE, value=float(score),
                                              unit=C.NO_UNITS))
    if threshold is not None:
        measurements.append(hd.sr.Measurement(name=C.OPERATING_POINT_THRESHOLD,
                                              value=float(threshold), unit=C.NO_UNITS))
    evaluations = [hd.sr.QualitativeEvaluation(C.TRIAGE_DECISION, C.DECISION_CODES[decision])]
    if decision is Decision.SUSPICIOUS:
        evaluations.append(hd.sr.QualitativeEvaluation(C.FINDING_ABNORMAL, C.PRESENT))
    elif decision is Decision.LIKELY_NORMAL:
        evaluations.append(hd.sr.QualitativeEvaluation(C.FINDING_ABNORMAL, C.ABSENT))
    elif reason is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(C.NOT_ASSESSABLE_REASON,
                                                       C.REASON_CODES[reason]))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=identifier),
        finding_type=C.FINDING_FOR_DECISION[decision],
        finding_sites=[hd.sr.FindingSite(C.FINDING_SITE_CHEST)],
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=img.SOPClassUID,
                referenced_sop_instance_uid=img.SOPInstanceUID,
            )
            for img in images if _is_image(img)
        ],
    )
    # A refused non-image instance (reason non_image) may not be an IMAGE item (dcmtk
    # rejects the document); it is named by UID here and listed in the evidence.
    for other in (img for img in images if not _is_image(img)):
        group[0].ContentSequence.append(
            hd.sr.UIDRefContentItem(
                name=C.NON_IMAGE_SOURCE, value=str(other.SOPInstanceUID),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    texts = [(C.OPERATING_POINT, op_name)]
    if decision is Decision.NOT_ASSESSABLE and reason_detail:
        texts.append((C.NOT_ASSESSABLE_DETAIL, reason_detail))
    for name, value in texts:
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
        )
    return group


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


def _add_ihe_algorithm_equipment(sr: Dataset, meta: ModelMetadata) -> None:
    """IHE AI Results: the algorithm as Contributing Equipment ("Processing Algorithm").

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
