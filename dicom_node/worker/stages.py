"""One study's path through the worker, stage by stage: :data:`STUDY_STAGES`, in order
(MONAI Deploy style: the pipeline readable in one place)::

    read           the spooled instances (dcmread; a file that does not parse is not assessable)
    score          each instance: gate -> decode -> preprocess -> model -> decision
                   (``cxr_triage.inference.pipeline.Triager``); broken films are quarantined
    aggregate      one study result (``cxr_triage.contract.result.aggregate_study``)
    priors         the patient's earlier studies (``[priors]``) and the prior-result safety
                   rule: likely normal -> suspicious after a recent suspicious prior
                   (``prior_results.with_priors``)
    heatmaps       kept for the worklist page, a validated model's only (never fails triage)
    sr             the result SR (``cxr_triage.dicom_node.results.sr.build_result_sr``); a
                   study that already had a result gets an *amended* one (same series, next
                   Instance Number, Predecessor Documents Sequence naming the replaced SR)
    save           the SR written once (fsync + rename): retries resend this file
    reserve        a SOP Instance UID per summary image to come

The worker then commits the result with the SR's deliveries, so the SR (the clinical result)
goes out at once (the summary images' deliveries are committed with it, held until their
files exist), and runs :data:`AFTER_RESULT_STAGES` once the SR was sent::

    summary_image  Secondary Capture per film (``[delivery] summary_image``; a courtesy),
                   showing the film decoded in ``score`` (``FilmResult.pixels``): each film
                   is decoded once per study
    summary_save   each summary image written once; the worker then adds them to the
                   committed result and makes their deliveries due (``JobStore.add_later_objects``)

Each stage's time is data: :attr:`StudyJob.timings_ms` (``run_stages``), logged with every
``study triaged`` line by ``triage.TriageWorker`` (the latency benchmark's breakdown reads it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Protocol

from pydicom import Dataset
from pydicom.uid import UID, generate_uid

from cxr_triage.config import Config
from cxr_triage.contract.model_file import ModelMetadata
from cxr_triage.contract.patient import PatientKey
from cxr_triage.contract.result import (
    Decision,
    FilmResult,
    NotAssessableReason,
    StudyResult,
    aggregate_study,
)
from cxr_triage.contract.sop_classes import is_triage_class
from cxr_triage.dicom_node.priors.lookup import PriorLookup
from cxr_triage.dicom_node.results.sr import Amendment, build_result_sr
from cxr_triage.dicom_node.results.sr_header import conform_for_report
from cxr_triage.dicom_node.results.summary_image import summary_images_if_enabled
from cxr_triage.dicom_node.store.heatmaps import save_study_heatmaps
from cxr_triage.dicom_node.store.jobs import InstanceRecord, ResultObject
from cxr_triage.dicom_node.store.spool import Quarantine, StateDirs
from cxr_triage.dicom_node.worker.prior_results import with_priors
from cxr_triage.dicom_node.worker.result_files import save_result_objects
from cxr_triage.inference.deflated import DeflateBomb, dcmread_bounded

log = logging.getLogger(__name__)

_BROKEN = (NotAssessableReason.UNDECODABLE, NotAssessableReason.NON_IMAGE)


class FilmTriager(Protocol):
    """What the node needs from the inference pipeline: one film in, one result out, and the
    scoring model's own metadata (for the SR's algorithm identification)."""

    meta: ModelMetadata
    operating_point: str   # the served point and its threshold (stated by every result)
    threshold: float

    def triage_dataset(self, ds: Dataset, source: str) -> FilmResult: ...


# -- what flows through the stages --------------------------------------------------------------
@dataclass(frozen=True)
class StudyContext:
    """What every study's stages share (one per worker)."""

    cfg: Config
    triager: FilmTriager
    dirs: StateDirs
    quarantine: Quarantine
    #: the patient's earlier studies (``[priors] enabled``); None: no priors stage
    priors: PriorLookup | None = None


@dataclass
class StudyJob:
    """One claimed study on its way through :data:`STUDY_STAGES`."""

    study_uid: str
    instances: list[InstanceRecord]
    read: list[tuple[InstanceRecord, Dataset | None, str | None]] = field(default_factory=list)
    films: list[FilmResult] = field(default_factory=list)
    sources: list[Dataset] = field(default_factory=list)
    result: StudyResult | None = None
    report: list[Dataset] = field(default_factory=list)
    objects: list[ResultObject] = field(default_factory=list)
    #: the summary images (made after the SR's commit), their SOP Instance UIDs (allocated
    #: before it: their deliveries are committed with the SR's) and their files
    summaries: list[Dataset] = field(default_factory=list)
    summary_uids: tuple[str, ...] = ()
    summary_objects: list[ResultObject] = field(default_factory=list)
    #: the study's earlier (current) result, which this one amends; None for a first result
    amends: Amendment | None = None
    #: milliseconds per stage (``read`` ... ``summary_save``; the worker adds ``commit`` and
    #: ``summary_commit``)
    timings_ms: dict[str, float] = field(default_factory=dict)


    def study_result(self) -> StudyResult:
        if self.result is None:
            raise RuntimeError("the aggregate stage has not run")
        return self.result


def _not_assessable(inst: InstanceRecord, reason: NotAssessableReason, detail: str) -> FilmResult:
    return FilmResult(Decision.NOT_ASSESSABLE, source=inst.path, sop_instance_uid=inst.sop_instance_uid,
                      series_instance_uid=inst.series_uid, study_instance_uid=inst.study_uid,
                      sop_class_uid=inst.sop_class_uid, reason=reason, reason_detail=detail)


# -- the stages ---------------------------------------------------------------------------------
def read_instances(ctx: StudyContext, job: StudyJob) -> None:
    """Parse each spooled file; the spooled bytes are exactly what the peer sent, so a file
    that does not parse is recorded (not raised)."""
    for inst in job.instances:
        try:
            job.read.append((inst, dcmread_bounded(inst.path), None))
        except DeflateBomb as exc:  # refused before pydicom inflates it whole
            job.read.append((inst, None, str(exc)))
        except Exception as exc:  # noqa: BLE001 - any parser error is "cannot parse"
            job.read.append((inst, None, f"cannot parse: {type(exc).__name__}"))
    _one_patient(job)


def _one_patient(job: StudyJob) -> None:
    """A result never mixes patients (issue 23): a film whose Patient ID is not that of the
    study's first-received instance is left out (logged by UID). The receiving side holds such
    instances already (``receive/patients.py``); this covers files stored before that check or
    imported from the spool at start."""
    def key(ds: Dataset) -> PatientKey:
        return PatientKey.from_header(ds) or PatientKey(patient_id="")

    parsed = [(inst, ds) for inst, ds, _ in job.read if ds is not None]
    if not parsed:
        return
    owner = key(min(parsed, key=lambda item: item[0].received_at)[1])
    kept = []
    for inst, ds, error in job.read:
        if ds is not None and not key(ds).same_id(owner):
            log.warning("instance left out of the study's result: another patient's",
                        extra={"study_uid": job.study_uid, "sop_instance_uid": inst.sop_instance_uid})
            continue
        kept.append((inst, ds, error))
    job.read = kept


def score_instances(ctx: StudyContext, job: StudyJob) -> None:
    """One film result per instance; broken films of the triage classes go to quarantine."""
    for inst, ds, parse_error in job.read:
        film = score_instance(ctx.triager, inst, ds, parse_error)
        job.films.append(film)
        if ds is not None:
            job.sources.append(ds)
        if film.reason in _BROKEN and is_triage_class(inst.sop_class_uid):
            _quarantine_copy(ctx.quarantine, inst, film)


def aggregate(ctx: StudyContext, job: StudyJob) -> None:
    """One result per study (``cxr_triage.contract.result.aggregate_study``)."""
    job.result = replace(aggregate_study(job.study_uid, job.films), operating_point=ctx.triager.operating_point,
                         threshold=ctx.triager.threshold)


def look_at_priors(ctx: StudyContext, job: StudyJob) -> None:
    """The patient's earlier studies and the prior-result safety rule (``prior_results``)."""
    if ctx.priors is not None:
        job.result = with_priors(ctx.cfg, ctx.priors, job.study_result(), job.sources)


def keep_heatmaps(ctx: StudyContext, job: StudyJob) -> None:
    """[web] hook: heatmaps for the worklist page (``store/heatmaps.py``); never fails triage.
    Only a model whose heatmap passed validation has its heatmaps shown, so kept."""
    if not ctx.triager.meta.heatmap_validated:
        return
    try:
        save_study_heatmaps(ctx.dirs.root, job.study_result())
    except OSError as exc:
        log.warning("heatmaps not kept", extra={"study_uid": job.study_uid, "error": str(exc)})


def build_sr(ctx: StudyContext, job: StudyJob) -> None:
    """The result SR over the films whose file parsed (only those can be evidence)."""
    for ds in job.sources:
        changed = conform_for_report(ds)            # the copy only: the spool keeps the file
        if changed:
            log.info("source header values made conformant for the result",
                     extra={"study_uid": job.study_uid, "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
                            "changed": ",".join(sorted(set(changed)))})
    job.report = [build_result_sr(_referenced(job), job.sources, ctx.triager.meta, amends=job.amends)]


def reserve_summaries(ctx: StudyContext, job: StudyJob) -> None:
    """A SOP Instance UID for each summary image to come (``[delivery] summary_image``: one
    per referenced film of the triage classes), so that their deliveries are committed with
    the SR's (``JobStore.complete_study(later=...)``)."""
    if ctx.cfg.delivery.summary_image:
        job.summary_uids = tuple(generate_uid() for _ in _summary_films(job)[1])


def _summary_films(job: StudyJob) -> tuple[StudyResult, list[FilmResult]]:
    referenced = _referenced(job)
    return referenced, [f for f in referenced.films if is_triage_class(f.sop_class_uid)]


def build_summary_images(ctx: StudyContext, job: StudyJob) -> None:
    """One Secondary Capture per film of the triage classes (``[delivery] summary_image``),
    showing the film decoded in ``score`` (``FilmResult.pixels``), which is then released;
    each takes its reserved SOP Instance UID. The picture is a courtesy: an error is logged
    (its deliveries are dropped) and the SR goes anyway."""
    referenced, films = _summary_films(job)
    try:
        if films and job.summary_uids:
            images = summary_images_if_enabled(ctx.cfg, replace(referenced, films=films), job.sources,
                                               ctx.triager.meta, amends=job.amends)
            for image, uid in zip(images, job.summary_uids, strict=True):
                image.SOPInstanceUID = image.file_meta.MediaStorageSOPInstanceUID = UID(uid)
            job.summaries.extend(images)
    except Exception as exc:  # noqa: BLE001 - any rendering problem
        log.warning("summary images not made", extra={
            "study_uid": job.study_uid, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        for film in job.films:
            film.pixels = None  # a detector film is 20-40 MB as float32: not kept to the commit


def save_objects(ctx: StudyContext, job: StudyJob) -> None:
    """The SR written once (``result_files.save_result_objects``)."""
    job.objects = save_result_objects(job.report, ctx.dirs.results, job.study_uid)


def save_summaries(ctx: StudyContext, job: StudyJob) -> None:
    """Each summary image written once (``result_files.save_result_objects``)."""
    job.summary_objects = save_result_objects(job.summaries, ctx.dirs.results, job.study_uid)


Stage = Callable[[StudyContext, StudyJob], None]

#: One study's path, in order; each stage's time lands in ``StudyJob.timings_ms[name]``.
STUDY_STAGES: tuple[tuple[str, Stage], ...] = (
    ("read", read_instances),
    ("score", score_instances),
    ("aggregate", aggregate),
    ("priors", look_at_priors),
    ("heatmaps", keep_heatmaps),
    ("sr", build_sr),
    ("save", save_objects),
    ("reserve", reserve_summaries),
)

#: After the result (and the SR's deliveries) was committed: the courtesy objects.
AFTER_RESULT_STAGES: tuple[tuple[str, Stage], ...] = (
    ("summary_image", build_summary_images),
    ("summary_save", save_summaries),
)


def run_stages(ctx: StudyContext, job: StudyJob,
               stages: tuple[tuple[str, Stage], ...] = STUDY_STAGES) -> StudyJob:
    """Run ``stages`` (by default :data:`STUDY_STAGES`) over ``job``, timing each (ms)."""
    for name, stage in stages:
        start = time.perf_counter()
        stage(ctx, job)
        job.timings_ms[name] = round((time.perf_counter() - start) * 1000.0, 3)
    return job


# -- helpers of the stages ---------------------------------------------------------------------
def score_instance(triager: FilmTriager, inst: InstanceRecord, ds: Dataset | None,
                   parse_error: str | None = None) -> FilmResult:
    """One received instance -> its film result.

    Which objects are films the model reads is the intended-use gate's decision alone
    (``inference.gate.check_object``, run by the triager before decoding).
    Any error of the pipeline becomes a not-assessable film (undecodable), never a crash.
    """
    if ds is None:
        return _not_assessable(inst, NotAssessableReason.UNDECODABLE, parse_error or "cannot parse")
    try:
        film = triager.triage_dataset(ds, inst.path)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a bad film must not stop the study (nor the
        # thread: a native decoder's panic arrives as a BaseException)
        log.warning("triage failed for an instance", extra={
            "sop_instance_uid": inst.sop_instance_uid, "error": f"{type(exc).__name__}: {exc}"})
        return _not_assessable(inst, NotAssessableReason.UNDECODABLE, f"{type(exc).__name__}: {exc}"[:200])
    # the job store's identifiers where the pipeline left them blank
    film.source = film.source or inst.path
    film.sop_instance_uid = film.sop_instance_uid or inst.sop_instance_uid
    film.series_instance_uid = film.series_instance_uid or inst.series_uid
    film.study_instance_uid = film.study_instance_uid or inst.study_uid
    film.sop_class_uid = film.sop_class_uid or inst.sop_class_uid
    return film


def _referenced(job: StudyJob) -> StudyResult:
    """The study result restricted to films whose file parsed."""
    study = job.study_result()
    have = {str(s.SOPInstanceUID) for s in job.sources}
    return replace(study, films=[f for f in study.films if f.sop_instance_uid in have])


def _quarantine_copy(quarantine: Quarantine, inst: InstanceRecord, film: FilmResult) -> None:
    try:
        data = Path(inst.path).read_bytes()
    except OSError:
        data = None
    quarantine.put(data, f"undecodable: {film.reason_detail}", study_uid=inst.study_uid,
                   sop_instance_uid=inst.sop_instance_uid, calling_ae=inst.calling_ae)
