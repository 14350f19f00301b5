"""Background triage, off the association threads: studies complete after a quiet period.

One study's path is :data:`STUDY_STAGES`, in order (MONAI Deploy style: the pipeline readable
in one place)::

    read           the spooled instances (dcmread; a file that does not parse is not assessable)
    score          each instance: gate -> decode -> preprocess -> model -> decision
                   (``cxr_triage.inference.pipeline.Triager``); broken films are quarantined
    aggregate      one study result (``cxr_triage.contract.result.aggregate_study``)
    heatmaps       kept for the worklist page, a validated model's only (never fails triage)
    sr             the result SR (``cxr_triage.dicom_node.results.sr.build_result_sr``); a
                   study that already had a result gets an *amended* one (same series, next
                   Instance Number, Predecessor Documents Sequence naming the replaced SR)
    summary_image  Secondary Capture per film (``[delivery] summary_image``; a courtesy)
    save           each object written once (fsync + rename): retries resend these files

:class:`TriageWorker` is the thread that claims due studies from the job store, runs the
stages, and commits result + deliveries in one transaction (``commit``). Each stage's time is
data: :attr:`StudyJob.timings_ms`, logged with every ``study triaged`` line (the latency
benchmark's breakdown reads it).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, field, replace
from io import BytesIO
from pathlib import Path
from typing import Callable, Protocol

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, DT, TM

from cxr_triage.config import Config
from cxr_triage.contract.model_file import ModelMetadata
from cxr_triage.contract.result import (
    Decision,
    FilmResult,
    NotAssessableReason,
    StudyResult,
    aggregate_study,
)
from cxr_triage.contract.sop_classes import COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE, is_triage_class
from cxr_triage.dicom_node.results.sr import (  # imported here, not in the thread
    Amendment,
    build_result_sr,
)
from cxr_triage.dicom_node.results.summary_image import summary_images_if_enabled
from cxr_triage.dicom_node.store import audit as A
from cxr_triage.dicom_node.store.heatmaps import save_study_heatmaps
from cxr_triage.dicom_node.store.jobs import InstanceRecord, JobStore, ResultObject, identity_from_headers
from cxr_triage.dicom_node.store.polling import PollingThread
from cxr_triage.dicom_node.store.queries import StudyQueries
from cxr_triage.dicom_node.store.spool import Quarantine, StateDirs, safe_name, write_atomic

log = logging.getLogger(__name__)

_BROKEN = (NotAssessableReason.UNDECODABLE, NotAssessableReason.NON_IMAGE)


class FilmTriager(Protocol):
    """What the node needs from the inference pipeline: one film in, one result out, and the
    scoring model's own metadata (for the SR's algorithm identification)."""

    meta: ModelMetadata

    def triage_dataset(self, ds: Dataset, source: str) -> FilmResult: ...


def load_triager(cfg: Config) -> FilmTriager:
    """The inference pipeline configured from ``[inference]`` (one ONNX session per process)."""
    from cxr_triage.inference.pipeline import Triager

    return Triager(cfg)


# -- what flows through the stages --------------------------------------------------------------
@dataclass(frozen=True)
class StudyContext:
    """What every study's stages share (one per worker)."""

    cfg: Config
    triager: FilmTriager
    dirs: StateDirs
    quarantine: Quarantine


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
    #: the study's earlier (current) result, which this one amends; None for a first result
    amends: Amendment | None = None
    #: milliseconds per stage (``read`` ... ``save``; the worker adds ``commit``)
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
            job.read.append((inst, dcmread(inst.path), None))
        except Exception as exc:  # noqa: BLE001 - any parser error is "cannot parse"
            job.read.append((inst, None, f"cannot parse: {type(exc).__name__}"))


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
    job.result = aggregate_study(job.study_uid, job.films)


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
        conform_for_report(ds)
    job.report = [build_result_sr(_referenced(job), job.sources, ctx.triager.meta, amends=job.amends)]


def build_summary_images(ctx: StudyContext, job: StudyJob) -> None:
    """One Secondary Capture per film of the triage classes (``[delivery] summary_image``).
    The picture is a courtesy: an error is logged and the SR still goes."""
    referenced = _referenced(job)
    films = [f for f in referenced.films if is_triage_class(f.sop_class_uid)]
    if not films:
        return
    pictured = replace(referenced, films=films)
    try:
        job.report.extend(summary_images_if_enabled(ctx.cfg, pictured, job.sources, ctx.triager.meta,
                                                    amends=job.amends))
    except Exception as exc:  # noqa: BLE001 - any rendering problem
        log.warning("summary images not made", extra={
            "study_uid": job.study_uid, "error": f"{type(exc).__name__}: {exc}"})


def save_objects(ctx: StudyContext, job: StudyJob) -> None:
    job.objects = save_result_objects(job.report, ctx.dirs.results, job.study_uid)


Stage = Callable[[StudyContext, StudyJob], None]

#: One study's path, in order; each stage's time lands in ``StudyJob.timings_ms[name]``.
STUDY_STAGES: tuple[tuple[str, Stage], ...] = (
    ("read", read_instances),
    ("score", score_instances),
    ("aggregate", aggregate),
    ("heatmaps", keep_heatmaps),
    ("sr", build_sr),
    ("summary_image", build_summary_images),
    ("save", save_objects),
)


def run_stages(ctx: StudyContext, job: StudyJob) -> StudyJob:
    """Run :data:`STUDY_STAGES` over ``job``, timing each (ms)."""
    for name, stage in STUDY_STAGES:
        start = time.perf_counter()
        stage(ctx, job)
        job.timings_ms[name] = round((time.perf_counter() - start) * 1000.0, 3)
    return job


def triage_study(ctx: StudyContext, store: JobStore, study_uid: str) -> StudyJob:
    """All stages for one study's instances (as recorded in the job store); the result
    amends the study's current one, if it has one."""
    job = StudyJob(study_uid, store.study_instances(study_uid), amends=find_amendment(store, study_uid))
    return run_stages(ctx, job)


def find_amendment(store: JobStore, study_uid: str) -> Amendment | None:
    """The study's current result as the one a new result replaces: its SR (the stored
    Comprehensive 3D SR, not a fallback) and its summary-image series with their Instance
    Numbers (read from the files written once in ``results/``). None when the study has no
    result yet, or its SR file cannot be read (the new result then starts a new series)."""
    objects = StudyQueries(store).current_result_objects(study_uid)
    srs = [o for o in objects if o.sop_class_uid == COMPREHENSIVE_3D_SR]
    if not srs:
        return None
    sr = srs[0]
    try:
        number = int(dcmread(sr.path, stop_before_pixels=True).get("InstanceNumber") or 1)
        scs = [(o, int(dcmread(o.path, stop_before_pixels=True).get("InstanceNumber") or 0))
               for o in objects if o.sop_class_uid == SECONDARY_CAPTURE]
    except (OSError, ValueError) as exc:
        log.warning("earlier result not readable; the new result starts a new series",
                    extra={"study_uid": study_uid, "error": f"{type(exc).__name__}: {exc}"})
        return None
    result_id = StudyQueries(store).current_result_id(study_uid)
    return Amendment(
        result_id=result_id if result_id is not None else 0,
        sr_sop_instance_uid=sr.sop_instance_uid, sr_sop_class_uid=sr.sop_class_uid,
        sr_series_uid=sr.series_uid, sr_instance_number=number,
        sc_series_uid=scs[0][0].series_uid if scs else None,
        sc_last_instance_number=max((n for _, n in scs), default=0))


# -- helpers of the stages ---------------------------------------------------------------------
def score_instance(triager: FilmTriager, inst: InstanceRecord, ds: Dataset | None,
                   parse_error: str | None = None) -> FilmResult:
    """One received instance -> its film result.

    Instances outside the triage classes are recorded as not assessable without decoding.
    Any error of the pipeline becomes a not-assessable film (undecodable), never a crash.
    """
    if ds is None:
        return _not_assessable(inst, NotAssessableReason.UNDECODABLE, parse_error or "cannot parse")
    if not is_triage_class(inst.sop_class_uid):
        reason = (NotAssessableReason.UNSUPPORTED_SOP_CLASS if "PixelData" in ds
                  else NotAssessableReason.NON_IMAGE)
        return _not_assessable(inst, reason, f"SOP class {inst.sop_class_uid} is not triaged")
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


_TEMPORAL = {"DA": DA, "DT": DT, "TM": TM}


def conform_for_report(ds: Dataset) -> list[str]:
    """Make a received header copyable into the result objects (in place).

    highdicom refuses what real modalities write — a date as ``17.08.1923``, a character
    set it does not list (``\\ISO 2022 IR 87``, a misspelt one) — and such a study would never
    get a result. Text is decoded with the declared set (pydicom falls back to its default
    for an unknown one) and re-declared as UTF-8; unreadable dates and times are blanked.
    Returns the keywords changed; never log their values (PHI).
    """
    from highdicom.enum import SpecificCharacterSetValues

    changed: list[str] = []
    charset = ds.get("SpecificCharacterSet")
    if charset is not None:
        values = [charset] if isinstance(charset, str) else list(charset)
        try:
            ok = len(values) == 1 and all(SpecificCharacterSetValues(v) for v in values)
        except ValueError:
            ok = False
        if not ok:
            ds.decode()
            ds.SpecificCharacterSet = "ISO_IR 192"
            changed.append("SpecificCharacterSet")
    for elem in ds.iterall():
        parse = _TEMPORAL.get(elem.VR)
        if parse is None or elem.value in (None, ""):
            continue
        try:
            for value in (elem.value if elem.VM > 1 else [elem.value]):
                if value not in (None, ""):
                    parse(str(value))
        except ValueError:
            elem.value = ""
            changed.append(elem.keyword or str(elem.tag))
    return changed


def save_result_objects(objects: list[Dataset], results_dir: Path, study_uid: str) -> list[ResultObject]:
    """Write each object once (fsync + rename) under ``results/<study>/``: retries resend
    these very files, so the SOP Instance UIDs never change."""
    saved = []
    for ds in objects:
        if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
            from pydicom.dataset import FileMetaDataset

            ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        path = write_atomic(results_dir / safe_name(study_uid) / f"{safe_name(str(ds.SOPInstanceUID))}.dcm",
                            buf.getvalue())
        saved.append(ResultObject(str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID),
                                  str(ds.SOPClassUID), str(path)))
    return saved



def _quarantine_copy(quarantine: Quarantine, inst: InstanceRecord, film: FilmResult) -> None:
    try:
        data = Path(inst.path).read_bytes()
    except OSError:
        data = None
    quarantine.put(data, f"undecodable: {film.reason_detail}", study_uid=inst.study_uid,
                   sop_instance_uid=inst.sop_instance_uid, calling_ae=inst.calling_ae)


# -- the thread ---------------------------------------------------------------------------------
class TriageWorker(PollingThread):
    """Claims quiet studies, runs :data:`STUDY_STAGES`, stores result + deliveries in one
    transaction."""

    error_msg = "triage worker error; retrying"

    def __init__(self, cfg: Config, store: JobStore, dirs: StateDirs, quarantine: Quarantine,
                 audit: A.AuditLog, triager: FilmTriager,
                 destinations: Callable[[], list[str]], poll_s: float = 0.2):
        super().__init__("triage-worker", store, poll_s)
        self.cfg = cfg
        self.audit = audit
        self.context = StudyContext(cfg, triager, dirs, quarantine)
        self.destinations = destinations
        # self.wake: set by the SCP when an instance is stored (look for due studies now)
        # called after each result is committed (the node kicks the deliverer with it)
        self.on_result: Callable[[], None] | None = None

    def recover(self) -> None:
        self.store.recover(studies=True, deliveries=False)

    def run_once(self) -> bool:
        """Triage one due study; False when none was due."""
        claimed = self.store.claim_due_study(self.cfg.node.quiet_period_s)
        if claimed is None:
            return False
        claimed_at = time.time()
        study_uid, generation = claimed
        t0 = time.perf_counter()
        try:
            job = triage_study(self.context, self.store, study_uid)
            result = job.study_result()
            start = time.perf_counter()
            rid = self.store.complete_study(
                study_uid, generation, result.decision.value, result.score, result.to_dict(),
                job.objects, self.destinations(), nodule_score=result.nodule_score,
                nodule_flag=result.nodule_flag,
                amends_result_id=job.amends.result_id if job.amends else None,
                identity=identity_from_headers(job.sources))
            job.timings_ms["commit"] = round((time.perf_counter() - start) * 1000.0, 3)
        except Exception as exc:
            transient = isinstance(exc, (OSError, sqlite3.OperationalError))  # disk full, busy
            try:
                state = self.store.fail_study(study_uid, generation, f"{type(exc).__name__}: {exc}",
                                              transient=transient)
            except sqlite3.Error:  # the store itself is unavailable: recover() re-queues it
                state = "processing"
            log.exception("study triage failed", extra={"study_uid": study_uid, "state": state})
            return True
        committed_at = time.time()
        if self.on_result is not None:
            self.on_result()
        log.info("study triaged", extra={
            "study_uid": study_uid, "result_id": rid, "decision": result.decision.value,
            "score": result.score, "nodule_flag": result.nodule_flag, "films": len(result.films),
            "ms": round((time.perf_counter() - t0) * 1000, 1),
            "stage_ms": job.timings_ms, "claimed_at": claimed_at, "committed_at": committed_at,
            "amends_sr": job.amends.sr_sop_instance_uid if job.amends else None,
            "sr_sop_instance_uid": job.objects[0].sop_instance_uid if job.objects else None})
        return True
