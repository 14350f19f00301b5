"""Background triage, off the association threads: studies complete after a quiet period.

:func:`triage_study` is one study's path (decode -> gate -> score -> report);
:class:`TriageWorker` is the thread that claims due studies from the job store and runs it.
Inference is done by ``cxr_triage.inference.pipeline.Triager`` and the report by
``cxr_triage.dicom_node.results.sr.build_result_sr``.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from io import BytesIO
from pathlib import Path
from typing import Any, Callable, Protocol

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, DT, TM

from cxr_triage.config import Config, resolve_path
from cxr_triage.contract.model_file import METADATA_KEY, ModelMetadata
from cxr_triage.contract.result import (
    Decision,
    FilmResult,
    NotAssessableReason,
    StudyResult,
    aggregate_study,
)
from cxr_triage.dicom_node.receive.scp import TRIAGE_SOP_CLASSES
from cxr_triage.dicom_node.results.sr import build_result_sr  # imported here, not in the thread
from cxr_triage.dicom_node.results.summary_image import summary_images_if_enabled
from cxr_triage.dicom_node.store import audit as A
from cxr_triage.dicom_node.store.heatmaps import save_study_heatmaps
from cxr_triage.dicom_node.store.jobs import InstanceRecord, JobStore, ResultObject
from cxr_triage.dicom_node.store.polling import PollingThread
from cxr_triage.dicom_node.store.spool import Quarantine, StateDirs, safe_name, write_atomic

log = logging.getLogger(__name__)

_TRIAGE_CLASSES = {str(u) for u in TRIAGE_SOP_CLASSES}
_BROKEN = (NotAssessableReason.UNDECODABLE, NotAssessableReason.NON_IMAGE)


class FilmTriager(Protocol):
    """What the node needs from the inference pipeline."""

    def triage_dataset(self, ds: Dataset, source: str) -> FilmResult: ...


# -- inference ------------------------------------------------------------------------------
def load_triager(cfg: Config) -> FilmTriager:
    """The inference pipeline configured from ``[inference]`` (one ONNX session per process)."""
    from cxr_triage.inference.pipeline import Triager

    return Triager(cfg)


def model_metadata(triager: Any, cfg: Config) -> ModelMetadata:
    """The scoring model's own metadata (for the SR's algorithm identification)."""
    for attr in ("metadata", "meta", "model_metadata"):
        meta = getattr(triager, attr, None)
        if isinstance(meta, ModelMetadata):
            return meta
        scorer = getattr(triager, "scorer", None)
        meta = getattr(scorer, attr, None) if scorer is not None else None
        if isinstance(meta, ModelMetadata):
            return meta
    import onnxruntime as ort

    sess = ort.InferenceSession(str(_model_path(cfg)), providers=["CPUExecutionProvider"])
    return ModelMetadata.from_json(sess.get_modelmeta().custom_metadata_map[METADATA_KEY])


def _model_path(cfg: Config) -> Path:
    from cxr_triage.paths import bundled_model_path

    return resolve_path(cfg, cfg.inference.model_path) if cfg.inference.model_path else bundled_model_path()


def triage_instance(triager: FilmTriager, inst: InstanceRecord) -> tuple[FilmResult, Dataset | None]:
    """One received instance -> (film result, its dataset for the report's evidence).

    Instances outside the triage classes are recorded as not assessable without decoding.
    Any error of the pipeline becomes a not-assessable film (undecodable), never a crash.
    """
    base = dict(source=inst.path, sop_instance_uid=inst.sop_instance_uid,
                series_instance_uid=inst.series_uid, study_instance_uid=inst.study_uid,
                sop_class_uid=inst.sop_class_uid)
    try:
        ds = dcmread(inst.path)
    except Exception as exc:  # noqa: BLE001 - the spooled bytes are exactly what the peer sent
        return FilmResult(Decision.NOT_ASSESSABLE, reason=NotAssessableReason.UNDECODABLE,
                          reason_detail=f"cannot parse: {type(exc).__name__}", **base), None
    if inst.sop_class_uid not in _TRIAGE_CLASSES:
        reason = (NotAssessableReason.UNSUPPORTED_SOP_CLASS if "PixelData" in ds
                  else NotAssessableReason.NON_IMAGE)
        return FilmResult(Decision.NOT_ASSESSABLE, reason=reason,
                          reason_detail=f"SOP class {inst.sop_class_uid} is not triaged", **base), ds
    try:
        film = triager.triage_dataset(ds, inst.path)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a bad film must not stop the study (nor the
        # thread: a native decoder's panic arrives as a BaseException)
        log.warning("triage failed for an instance", extra={
            "sop_instance_uid": inst.sop_instance_uid, "error": f"{type(exc).__name__}: {exc}"})
        return FilmResult(Decision.NOT_ASSESSABLE, reason=NotAssessableReason.UNDECODABLE,
                          reason_detail=f"{type(exc).__name__}: {exc}"[:200], **base), ds
    for key, val in base.items():
        if getattr(film, key, None) in (None, ""):
            setattr(film, key, val)
    return film, ds


# -- report ---------------------------------------------------------------------------------
def build_report(cfg: Config, study: StudyResult, sources: list[Dataset],
                 meta: ModelMetadata) -> list[Dataset]:
    """The result objects for a study: the SR, then (``[delivery] summary_image``) one
    Secondary Capture per film of the triage classes."""
    for ds in sources:
        conform_for_report(ds)
    # Films whose file could not be parsed cannot be referenced as evidence.
    have = {str(s.SOPInstanceUID) for s in sources}
    referenced = StudyResult(study.study_instance_uid, study.decision, study.score,
                             [f for f in study.films if f.sop_instance_uid in have])
    objects: list[Dataset] = [build_result_sr(referenced, sources, meta)]
    films = [f for f in referenced.films if f.sop_class_uid in _TRIAGE_CLASSES]
    if films:
        pictured = StudyResult(study.study_instance_uid, study.decision, study.score, films)
        try:
            objects.extend(summary_images_if_enabled(cfg, pictured, sources, meta))
        except Exception as exc:  # noqa: BLE001 - the picture is a courtesy; the SR still goes
            log.warning("summary images not made", extra={
                "study_uid": study.study_instance_uid, "error": f"{type(exc).__name__}: {exc}"})
    return objects


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


def triage_study(
    cfg: Config,
    store: JobStore,
    study_uid: str,
    triager: FilmTriager,
    meta: ModelMetadata,
    dirs: StateDirs,
    quarantine: Quarantine,
) -> tuple[StudyResult, list[ResultObject]]:
    """decode -> gate -> score each instance, aggregate, build and save the report."""
    films: list[FilmResult] = []
    sources: list[Dataset] = []
    for inst in store.study_instances(study_uid):
        film, ds = triage_instance(triager, inst)                    # decode -> gate -> score
        films.append(film)
        if ds is not None:
            sources.append(ds)
        # broken films of the triage classes (undecodable, or an image class without pixels)
        if film.reason in _BROKEN and inst.sop_class_uid in _TRIAGE_CLASSES:
            _quarantine_copy(quarantine, inst, film)
    result = aggregate_study(study_uid, films)                       # one result per study
    try:  # [web] hook: heatmaps for the worklist page (heatmaps.py); never fails triage
        save_study_heatmaps(dirs.root, result)
    except OSError as exc:
        log.warning("heatmaps not kept", extra={"study_uid": study_uid, "error": str(exc)})
    report = build_report(cfg, result, sources, meta)                 # SR (+ summary images)
    objects = save_result_objects(report, dirs.results, study_uid)
    return result, objects


def _quarantine_copy(quarantine: Quarantine, inst: InstanceRecord, film: FilmResult) -> None:
    try:
        data = Path(inst.path).read_bytes()
    except OSError:
        data = None
    quarantine.put(data, f"undecodable: {film.reason_detail}", study_uid=inst.study_uid,
                   sop_instance_uid=inst.sop_instance_uid, calling_ae=inst.calling_ae)


# -- the thread -----------------------------------------------------------------------------
class TriageWorker(PollingThread):
    """Claims quiet studies, triages them, stores result + deliveries in one transaction."""

    error_msg = "triage worker error; retrying"

    def __init__(self, cfg: Config, store: JobStore, dirs: StateDirs, quarantine: Quarantine,
                 audit: A.AuditLog, triager: FilmTriager, meta: ModelMetadata,
                 destinations: Callable[[], list[str]], poll_s: float = 0.2):
        super().__init__("triage-worker", store, poll_s)
        self.cfg = cfg
        self.dirs = dirs
        self.quarantine = quarantine
        self.audit = audit
        self.triager = triager
        self.meta = meta
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
        study_uid, generation = claimed
        t0 = time.perf_counter()
        try:
            result, objects = triage_study(self.cfg, self.store, study_uid, self.triager, self.meta,
                                           self.dirs, self.quarantine)
            rid = self.store.complete_study(
                study_uid, generation, result.decision.value, result.score, result.to_dict(),
                objects, self.destinations())
        except Exception as exc:
            transient = isinstance(exc, (OSError, sqlite3.OperationalError))  # disk full, busy
            try:
                state = self.store.fail_study(study_uid, generation, f"{type(exc).__name__}: {exc}",
                                              transient=transient)
            except sqlite3.Error:  # the store itself is unavailable: recover() re-queues it
                state = "processing"
            log.exception("study triage failed", extra={"study_uid": study_uid, "state": state})
            return True
        if self.on_result is not None:
            self.on_result()
        log.info("study triaged", extra={
            "study_uid": study_uid, "result_id": rid, "decision": result.decision.value,
            "score": result.score, "films": len(result.films),
            "ms": round((time.perf_counter() - t0) * 1000, 1),
            "sr_sop_instance_uid": objects[0].sop_instance_uid if objects else None})
        return True
