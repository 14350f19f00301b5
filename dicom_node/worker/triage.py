"""Background triage, off the association threads: studies complete after a quiet period.

:class:`TriageWorker` is the thread that claims due studies from the job store, runs one
study's stages (``stages.STUDY_STAGES``: read, score, aggregate, priors, heatmaps, sr, save;
each timed into ``StudyJob.timings_ms``), and commits result + the SR's deliveries in one
transaction (``commit``, also timed), so the deliverer sends the SR at once. Then the summary
images (``stages.AFTER_RESULT_STAGES``) are made, written and added to the committed result
with their own deliveries (``summary_commit``). A crash in between leaves the result and its
SR intact and the study without its (courtesy) summary image. A study that already has a
result gets an amended one (:func:`find_amendment`). Every study ends in one ``study
triaged`` log line with its stage timings (the latency benchmark's breakdown reads it).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Callable, Protocol

from pydicom import dcmread

from cxr_triage.config import Config
from cxr_triage.contract.sop_classes import COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE
from cxr_triage.dicom_node.priors.lookup import PriorLookup
from cxr_triage.dicom_node.results.sr import Amendment
from cxr_triage.dicom_node.store import audit as A
from cxr_triage.dicom_node.store.jobs import JobStore, identity_from_headers
from cxr_triage.dicom_node.store.polling import PollingThread
from cxr_triage.dicom_node.store.queries import StudyQueries
from cxr_triage.dicom_node.store.spool import Quarantine, StateDirs
from cxr_triage.dicom_node.worker.stages import (
    AFTER_RESULT_STAGES,
    FilmTriager,
    StudyContext,
    StudyJob,
    run_stages,
)

log = logging.getLogger(__name__)

#: at most this long the worker waits for the SR's send before it renders the summary images
#: (a hung destination costs each study this much, not more)
SR_SEND_WAIT_S = 0.3


def load_triager(cfg: Config) -> FilmTriager:
    """The inference pipeline configured from ``[inference]`` (one ONNX session per process).
    With ``[delivery] summary_image`` on, it keeps each decoded film on its result, so the
    summary image shows the film decoded for scoring instead of decoding it again."""
    from cxr_triage.inference.pipeline import Triager  # ONNX Runtime: loaded when the node starts

    return Triager(cfg, keep_pixels=cfg.delivery.summary_image)


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


# -- the thread ---------------------------------------------------------------------------------

class DeliveryProgress(Protocol):
    """What the worker needs of the deliverer (:class:`~cxr_triage.dicom_node.delivery.deliverer.Deliverer`)."""

    def progress(self) -> int:
        """A counter that moves when a batch was sent or a pass found nothing due."""

    def wait_for_progress(self, mark: int, timeout_s: float) -> bool:
        """Until :meth:`progress` moved past ``mark``, at most ``timeout_s`` seconds; False on time-out."""

class TriageWorker(PollingThread):
    """Claims quiet studies, runs :data:`STUDY_STAGES`, stores result + the SR's deliveries in
    one transaction, then adds the summary images (:data:`AFTER_RESULT_STAGES`)."""

    error_msg = "triage worker error; retrying"

    def __init__(self, cfg: Config, store: JobStore, dirs: StateDirs, quarantine: Quarantine,
                 audit: A.AuditLog, triager: FilmTriager,
                 destinations: Callable[[], list[str]], poll_s: float = 0.2):
        super().__init__("triage-worker", store, poll_s)
        self.cfg = cfg
        self.audit = audit
        self.context = StudyContext(cfg, triager, dirs, quarantine,
                                    PriorLookup(cfg, StudyQueries(store)) if cfg.priors.enabled else None)
        self.destinations = destinations
        # self.wake: set by the SCP when an instance is stored (look for due studies now)
        # called after each result is committed (the node kicks the deliverer with it)
        self.on_result: Callable[[], None] | None = None
        # the deliverer (its progress counter and wait): the summary images are made once the SR was sent
        self.delivery_progress: DeliveryProgress | None = None

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
                identity=identity_from_headers(job.sources), later=job.summary_uids)
            job.timings_ms["commit"] = round((time.perf_counter() - start) * 1000.0, 3)
        except Exception as exc:
            transient = isinstance(exc, (OSError, sqlite3.OperationalError))  # disk full, busy
            try:
                state = self.store.fail_study(study_uid, generation, f"{type(exc).__name__}: {exc}",
                                              transient=transient)
            except sqlite3.Error:  # the store unavailable: the claim was let go, so it lapses and is retried
                state = "processing"
            log.exception("study triage failed", extra={"study_uid": study_uid, "state": state})
            return True
        committed_at = time.time()
        mark = self.delivery_progress.progress() if self.delivery_progress else 0
        if self.on_result is not None:
            self.on_result()
        if job.summary_uids and self.delivery_progress is not None:
            self.delivery_progress.wait_for_progress(mark, SR_SEND_WAIT_S)
        self._add_summaries(job, rid)
        log.info("study triaged", extra={
            "study_uid": study_uid, "result_id": rid, "decision": result.decision.value,
            "escalation": result.escalation.reason.value if result.escalation else None,
            "score": result.score, "nodule_flag": result.nodule_flag, "films": len(result.films),
            "ms": round((time.perf_counter() - t0) * 1000, 1),
            "stage_ms": job.timings_ms, "claimed_at": claimed_at, "committed_at": committed_at,
            "amends_sr": job.amends.sr_sop_instance_uid if job.amends else None,
            "sr_sop_instance_uid": job.objects[0].sop_instance_uid if job.objects else None})
        return True

    def _add_summaries(self, job: StudyJob, result_id: int) -> None:
        """The summary images of a committed result: made, written, added, their deliveries
        made due (the deliverer is woken again). A failure here is logged: the result and its
        SR stand (the held deliveries are tried when their hold ends, and reported refused)."""
        if not job.summary_uids:
            return
        try:
            run_stages(self.context, job, AFTER_RESULT_STAGES)
            start = time.perf_counter()
            self.store.add_later_objects(result_id, job.summary_objects, job.summary_uids)
            job.timings_ms["summary_commit"] = round((time.perf_counter() - start) * 1000.0, 3)
        except Exception as exc:  # noqa: BLE001 - disk full, store unavailable: a courtesy lost
            log.warning("summary images not added to the result", extra={
                "study_uid": job.study_uid, "result_id": result_id,
                "error": f"{type(exc).__name__}: {exc}"})
            try:   # their held deliveries dropped (else reported refused when the hold ends)
                self.store.add_later_objects(result_id, [], job.summary_uids)
            except Exception:  # noqa: BLE001 - the store itself is down
                pass
            return
        if self.on_result is not None:
            self.on_result()
