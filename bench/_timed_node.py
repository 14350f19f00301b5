"""``cxr-triage serve`` with stage timers, for the latency benchmark's breakdown.

Runs the unchanged CLI entry point in this process after wrapping a few node functions
(module attributes, looked up at call time) with timers. Each wrapper adds microseconds; the
stages it times are what the pipeline's own ``timings_ms`` leave out: reading the spooled
file, building and saving the report, committing the result, the deliverer's pick-up and the
C-STORE of the result. One JSON log line ``bench stage timings`` per study and per delivery.

    python bench/_timed_node.py --config CFG serve
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import time
from typing import Any, Callable

log = logging.getLogger("cxr_triage.bench")
_lock = threading.Lock()
_studies: dict[str, dict[str, float]] = {}


def _add(study_uid: str, key: str, value: float) -> None:
    with _lock:
        rec = _studies.setdefault(study_uid, {})
        rec[key] = round(rec.get(key, 0.0) + value, 3)


def _timed(fn: Callable[..., Any], key: str, study_of: Callable[..., str]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(study_of(*args, **kwargs), key, (time.perf_counter() - start) * 1000.0)
    return wrapper


def install() -> None:
    from cxr_triage.dicom_node.delivery import deliverer as delivery
    from cxr_triage.dicom_node.store.jobs import JobStore
    from cxr_triage.dicom_node.worker import triage as worker

    current = threading.local()  # the study the worker thread is on (for dcmread)

    orig_instance = worker.triage_instance

    def triage_instance(triager: Any, inst: Any) -> Any:
        current.study = inst.study_uid
        return orig_instance(triager, inst)

    worker.triage_instance = triage_instance
    worker.dcmread = _timed(worker.dcmread, "read_spool_ms", lambda *a, **k: getattr(current, "study", ""))
    worker.build_report = _timed(worker.build_report, "report_ms", lambda cfg, study, *a, **k: study.study_instance_uid)
    worker.build_result_sr = _timed(worker.build_result_sr, "sr_build_ms", lambda study, *a, **k: study.study_instance_uid)
    worker.summary_images_if_enabled = _timed(worker.summary_images_if_enabled, "summary_image_ms",
                                              lambda cfg, study, *a, **k: study.study_instance_uid)
    worker.save_result_objects = _timed(worker.save_result_objects, "save_ms", lambda objs, d, uid, *a, **k: uid)
    worker.save_study_heatmaps = _timed(worker.save_study_heatmaps, "heatmaps_ms", lambda root, res, *a, **k: res.study_instance_uid)

    orig_claim = JobStore.claim_due_study

    def claim_due_study(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = orig_claim(self, *args, **kwargs)
        if out is not None:
            _add(out[0], "claimed_at", time.time())
        return out

    orig_complete = JobStore.complete_study

    def complete_study(self: Any, study_uid: str, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = orig_complete(self, study_uid, *args, **kwargs)
        _add(study_uid, "commit_ms", (time.perf_counter() - start) * 1000.0)
        _add(study_uid, "committed_at", time.time())
        with _lock:
            rec = _studies.pop(study_uid, {})
        log.info("bench stage timings", extra={"study_uid": study_uid, "stage": "triage", **rec})
        return out

    JobStore.claim_due_study = claim_due_study
    JobStore.complete_study = complete_study

    orig_send = delivery.send_c_store

    def send_c_store(batch: list[Any], *args: Any, **kwargs: Any) -> Any:
        t_start, start = time.time(), time.perf_counter()
        out = orig_send(batch, *args, **kwargs)
        ms = round((time.perf_counter() - start) * 1000.0, 3)
        for item in batch:
            log.info("bench stage timings", extra={"study_uid": item.study_uid, "stage": "send",
                                                   "send_started_at": t_start, "send_ms": ms,
                                                   "batch": len(batch)})
        return out

    delivery.send_c_store = send_c_store


if __name__ == "__main__":
    install()
    from cxr_triage.cli import main

    sys.exit(main(sys.argv[1:]))
