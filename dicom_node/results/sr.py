"""The study's triage result as a DICOM Structured Report (TID 1500, Comprehensive 3D SR).

Built with highdicom's templates, never by hand, so the tree is conformant by construction:

    MeasurementReport (TID 1500), every container ContinuityOfContent SEPARATE
      Qualitative Evaluations (TID 1500 row 12; first, so a reader sees the decision first)
        AI triage decision (CODE) of the study, its not-assessable reasons (CODE),
        [AI nodule/mass flag (CODE)], study score and threshold (NUM), operating point
        (TEXT), [nodule/mass score and threshold (NUM), nodule/mass operating point in
        words (TEXT)], Algorithm Identification
        Non-image instance result (CONTAINER) per refused instance that is not an image
        {escalation reason (CODE) after the decision; Prior AI triage result used
        (CONTAINER): the prior's Study Instance UID, Study Date, result SR (UIDREF), finding}
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
flag is an added finding beside the decision, never a change of it. A model that gives the
score without a flag (``ModelMetadata.nodule_flag_shown`` false, issue 22) has no flag and no
threshold items: the score, and the operating point in words saying why no flag is given.
{...}: only when a prior result raised the study to suspicious (``StudyResult.escalation``,
``[priors]``); that prior's SR is also in the Pertinent Other Evidence Sequence.

This module is the document: it assembles the tree and makes the Comprehensive 3D SR, a
first result or an :class:`Amendment` of an earlier one. The layers below it, each importing
only lower ones: ``sr_codes`` (the codes, docs/conformance.md "Result codes"), ``sr_header``
(attributes copied from the films, so the PACS files the SR into the source study in its own
cautionary series; equipment; Series Description), ``sr_content`` (the content items, NUM
rounding). Above it: ``summary_image``; read back by ``sr_reader``; ``sr_classes`` converts
it to the fallback SR classes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from cxr_triage.contract.model_file import ModelMetadata
from cxr_triage.contract.result import Decision, FilmResult, StudyResult
from cxr_triage.dicom_node.results import sr_codes as C
from cxr_triage.dicom_node.results.sr_content import (
    FilmContent,
    film_group,
    image_library,
    is_image,
    nodule_of,
    non_image_result,
    separate_everywhere,
    study_evaluations,
    study_reasons,
)
from cxr_triage.dicom_node.results.sr_header import (
    SOFTWARE_NAME,
    device_uid,
    header_description,
    mark_equipment,
    software_versions,
    source_headers,
)

SERIES_DESCRIPTION = "AI triage - research output, not for diagnosis"  # decision unknown
SERIES_PREFIX = "AI triage"
DEFAULT_SERIES_NUMBER = 990
#: Completion Flag Description (LO) of an amended result: the header says it supersedes.
AMENDED_COMPLETION = "Amended: supersedes the earlier AI triage result of this study"
AMENDED_SUFFIX = " (amended)"   # after the Series Description prefix: "AI triage (amended): ..."

_Group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations


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
    headers = _checked_headers(study, sources)

    with warnings.catch_warnings():
        # highdicom warns about single-component person names, quoting the patient's name:
        # that would put PHI into the logs.
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        content = measurement_report(study, headers, meta)
        sr = hd.sr.Comprehensive3DSR(
            evidence=headers,
            content=_hollow(content[0]),
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
            software_versions=software_versions(meta)[0],  # all values: mark_equipment
            coding_schemes=[
                CodingSchemeIdentificationItem(
                    designator=C.SCHEME,
                    name=C.SCHEME_NAME,
                    version=C.SCHEME_VERSION,
                    responsible_organization=C.SCHEME_ORGANIZATION,
                )
            ],
        )
    _hand_over(sr, content, headers)
    if amends is not None:
        sr.CompletionFlagDescription = AMENDED_COMPLETION
    mark_equipment(sr, meta)
    cite_prior(sr, study)
    return sr


def _hollow(root: Dataset) -> Dataset:
    """The root container's own attributes (concept name, template, continuity) with an empty
    Content Sequence: what highdicom's SR is built from (:func:`_hand_over` then gives it the
    tree). ``_SR.__init__`` deep-copies the content it is given, converts the copy item by item
    (``ContentItem._from_dataset_derived``) and searches it twice for references, making a
    CodedConcept per item (``collect_evidence``): most of the SR's build time (issue 21), all of
    it for a tree made for this one SR from highdicom's own items (``measurement_report``)."""
    hollow = Dataset()
    for elem in root:
        if elem.keyword != "ContentSequence":
            hollow.add(elem)
    hollow.ContentSequence = []
    return hollow


def _hand_over(sr: hd.sr.Comprehensive3DSR, content: hd.sr.MeasurementReport,
               headers: Sequence[Dataset]) -> None:
    """The report's tree into the SR built over its :func:`_hollow` root (the same data element,
    as highdicom copies the root's), after highdicom's check that every instance an IMAGE or
    COMPOSITE item references is evidence (ValueError otherwise; the evidence sequences come
    from ``headers`` alone, so they are the same)."""
    root = content[0]
    missing = _referenced_uids(root) - {str(h.SOPInstanceUID) for h in headers}
    if missing:
        raise ValueError(f"no evidence for the instances the content references: {sorted(missing)}")
    sr["ContentSequence"] = root["ContentSequence"]
    sr._content = content  # what ``sr.content`` returns: the tree as built, not a converted copy


def _referenced_uids(item: Dataset) -> set[str]:
    """SOP Instance UIDs the IMAGE and COMPOSITE items under ``item`` reference (PS3.3 C.17.3)."""
    found: set[str] = set()
    for child in item.get("ContentSequence", []):
        if child.ValueType in ("IMAGE", "COMPOSITE"):
            found.add(str(child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        found |= _referenced_uids(child)
    return found


def cite_prior(sr: Dataset, study: StudyResult) -> None:
    """The prior result SR a study was escalated by (``study.escalation``), listed in the
    Pertinent Other Evidence Sequence (PS3.3 C.17.2.3: study -> series -> SOP class and
    instance); nothing when the study was not escalated or that SR is not known."""
    escalation = study.escalation
    prior = next((p for p in study.priors if escalation is not None
                  and p.study_uid == escalation.prior_study_uid
                  and p.sr_uid and p.sr_series_uid and p.sr_class_uid), None)
    if prior is None:
        return
    instance = Dataset()
    instance.ReferencedSOPClassUID = prior.sr_class_uid
    instance.ReferencedSOPInstanceUID = prior.sr_uid
    series = Dataset()
    series.SeriesInstanceUID = prior.sr_series_uid
    series.ReferencedSOPSequence = [instance]
    cited = Dataset()
    cited.StudyInstanceUID = prior.study_uid
    cited.ReferencedSeriesSequence = [series]
    sr.PertinentOtherEvidenceSequence = [*sr.get("PertinentOtherEvidenceSequence", []), cited]


def _checked_headers(study: StudyResult, sources: Sequence[Dataset]) -> list[Dataset]:
    """The sources' pixel-free headers (``sr_header.source_headers``); ValueError when there
    are none, one is from another study, or a film has no source."""
    headers = source_headers(sources)
    if not headers:
        raise ValueError("build_result_sr needs at least one source dataset")
    foreign = {h.StudyInstanceUID for h in headers} - {study.study_instance_uid}
    if foreign:
        raise ValueError(
            f"sources belong to other studies than {study.study_instance_uid}: {sorted(foreign)}"
        )
    have = {str(h.SOPInstanceUID) for h in headers}
    missing = [f.sop_instance_uid for f in study.films if str(f.sop_instance_uid) not in have]
    if missing:
        raise ValueError(f"films without a matching source dataset: {missing}")
    return headers


def measurement_report(study: StudyResult, headers: Sequence[Dataset],
                       meta: ModelMetadata) -> hd.sr.MeasurementReport:
    """The TID 1500 tree: the study's evaluations first, the device observer (the model), the
    procedure reported, the Image Library, one measurement group per image film; every
    container SEPARATE. ``headers``: one per film of ``study``, matched by SOP Instance UID."""
    op_name, threshold = _operating_point(study, meta)
    algorithm = hd.sr.AlgorithmIdentification(
        name=meta.name,
        version=meta.version,
        manufacturer=meta.manufacturer or None,
        parameters=[f"operating_point={op_name}"]
        + ([f"threshold={threshold!r}"] if threshold is not None else []),
    )
    by_uid = {str(h.SOPInstanceUID): h for h in headers}
    groups: list[_Group] = []
    non_image: list[hd.sr.ContainerContentItem] = []
    for index, film in enumerate(study.films, start=1):
        source = by_uid[str(film.sop_instance_uid)]
        content = _film_content(f"{C.FILM_GROUP_PREFIX}{index}", film, op_name, threshold)
        if is_image(source):
            groups.append(film_group(content, source, algorithm))
        else:
            non_image.append(non_image_result(content, source))
    if not groups:
        # No film is an image: nothing to draw a region on, but TID 1500 (and highdicom)
        # need one group. The study's decision stays in the report-level evaluations.
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(),
                                                         identifier=C.STUDY_GROUP_ID),
            finding_sites=[hd.sr.FindingSite(C.FINDING_SITE_CHEST)],
            algorithm_id=algorithm,
        ))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=_observer(meta)),
        procedure_reported=_procedures(headers),
        imaging_measurements=groups,
    )
    images = [h for h in headers if is_image(h)]
    if images:
        report[0].ContentSequence.insert(len(report[0].ContentSequence) - 1,
                                         image_library(images))
    # The study's decision first: TID 1500 is "order non-significant", and readers of a
    # rendered SR (dsr2html, a PACS text view) see the top of the document first.
    report[0].ContentSequence.insert(0, study_evaluations(
        study, algorithm, op_name, threshold, non_image))
    separate_everywhere(report[0])
    return report


def _film_content(identifier: str, film: FilmResult, op_name: str,
                  threshold: float | None) -> FilmContent:
    """What one film's group states: its own operating point and threshold where it has
    them, the study's otherwise; none for a not-assessable film that was never scored
    (OHIF would show the threshold as the group's label)."""
    film_threshold = film.threshold if film.threshold is not None else threshold
    if film.decision is Decision.NOT_ASSESSABLE and film.threshold is None:
        film_threshold = None
    return FilmContent(
        identifier, film.decision, film.score, film.reason, film.reason_detail,
        film.operating_point or op_name, film_threshold,
        nodule_of(film.nodule_score, film.nodule_threshold, film.nodule_flag))


def _observer(meta: ModelMetadata) -> hd.sr.ObserverContext:
    """The device observer: the model, with a UID fixed per model version."""
    return hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(meta),
            name=f"{meta.name} {meta.version}",
            manufacturer_name=meta.manufacturer or None,
            model_name=meta.name,
        ),
    )


def _operating_point(study: StudyResult, meta: ModelMetadata) -> tuple[str, float | None]:
    """The operating point the films were decided at: a scored film's, else the study's (the
    served point, also for a study none of whose films was scored), else the model's default."""
    for film in study.films:
        if film.operating_point and film.threshold is not None:
            return film.operating_point, float(film.threshold)
    if study.operating_point and study.threshold is not None:
        return study.operating_point, float(study.threshold)
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
