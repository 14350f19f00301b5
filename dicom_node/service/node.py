"""The node assembled: the whole path of a film in one place (read this first, then
``inference/pipeline.py``). Every arrow is a file or a row on disk, so a restart resumes where
the node stopped (:meth:`Node.recover`).

    receive          association threads (pynetdicom AE: ``receive/server.py``)
      who may associate     ``receive/associations.py``: AE titles, hosts, shutdown, audited
      C-STORE data set      streamed to ``<spool>/.incoming/`` (``receive/incoming.py``)
      store + enqueue       ``receive/scp.StoreHandler``: header checked, file moved into the
                            spool (``store/spool.Spool``: fsync + atomic rename) and recorded
                            (``store/jobs.JobStore``: SQLite WAL), *then* Success; else 0xA700
                            or an error status (``receive/statuses.py``), quarantined
    triage           the worker thread (``worker/triage.TriageWorker``), woken by each store,
                     claims a study after its quiet period and runs ``worker/stages.STUDY_STAGES``:
      read -> score         each film: gate -> decode -> preprocess -> ONNX Runtime -> decision
                            (``inference/pipeline.Triager``: one ONNX session per process)
      aggregate             one result per study (``cxr_triage.contract.result.aggregate_study``)
      heatmaps, sr, save    the result SR (``results/sr.build_result_sr``; amended when the
                            study had one), written once
      commit                result + one delivery per object and destination, one transaction
                            (the summary images' held); the SR goes out at once
      summary_image         after the SR was sent: the summary images, written once, their
                            deliveries made due (``store/jobs.JobStore.add_later_objects``)
    deliver          the deliverer thread (``delivery/deliverer.Deliverer``), woken by each
                     result: everything due, per destination: C-STORE over one association
                     (``delivery/dicom_send.py``), HL7 ORU^R01 to the RIS (``delivery/hl7.py``)
                     or the local outbox; back-off, refusals, dead letter
    worklist         optional HTTP(S) pages, JSON API and metrics (``web/app.py``), with drift
                     gauges (``monitoring/drift.py``)

pynetdicom internals the node relies on are patched in one place, ``dicom_node/compat.py``,
which refuses to start the node on a pynetdicom other than the 3.0.x they were written for.
SIGTERM (``cxr-triage serve``) stops accepting, lets open associations, the study in hand and
its delivery finish for up to ``STOP_GRACE_S``, aborts what is left, then exits
(:meth:`Node.stop`: within 10 s whatever the peers do).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from pydicom import dcmread

from cxr_triage.config import Config, resolve_path
from cxr_triage.contract.sop_classes import is_sr_class
from cxr_triage.dicom_node.compat import require_supported_pynetdicom
from cxr_triage.dicom_node.delivery.deliverer import Deliverer, destinations_for
from cxr_triage.dicom_node.monitoring.drift import DriftCollector
from cxr_triage.dicom_node.receive.scp import StoreHandler
from cxr_triage.dicom_node.receive.server import start_scp
from cxr_triage.dicom_node.store import audit as A
from cxr_triage.dicom_node.store.db import StoreOptions
from cxr_triage.dicom_node.store.jobs import InstanceRecord, JobStore
from cxr_triage.dicom_node.store.queries import StudyQueries
from cxr_triage.dicom_node.store.spool import Quarantine, Spool, StateDirs, dataset_sha256
from cxr_triage.dicom_node.worker.triage import TriageWorker, load_triager

log = logging.getLogger(__name__)
SHARED_SPOOL_GRACE_S = 600.0   # partial files younger than this may be another node's C-STORE
# SIGTERM: the node is gone within 10 s whatever its peers do (a grace, then sends are aborted)
STOP_GRACE_S = 6.0


class Node:
    """One running node: SCP + triage worker + deliverer over one state dir."""

    def __init__(self, cfg: Config, triager: Any = None):
        self.cfg = cfg
        self.dirs = StateDirs(resolve_path(cfg, cfg.node.state_dir)).create()
        self.store = JobStore(self.dirs.queue_db, options=StoreOptions.from_settings(cfg.store))
        self.queries = StudyQueries(self.store)
        self.spool = Spool(self.dirs.spool)
        self.quarantine = Quarantine(self.dirs.quarantine, max_files=cfg.node.quarantine_max_files,
                                     max_bytes=cfg.node.quarantine_max_bytes)
        self.audit = A.AuditLog(self.dirs.audit_log, max_bytes=cfg.node.audit_max_bytes,
                                keep=cfg.node.audit_keep_files)
        self._triager = triager
        self.ae: Any = None
        self.server: Any = None
        self.handler: StoreHandler | None = None
        self.worker: TriageWorker | None = None
        self.deliverer: Deliverer | None = None
        self.web: Any = None

    @property
    def port(self) -> int:
        """The bound port (useful with ``port = 0``)."""
        return int(self.server.server_address[1]) if self.server else int(self.cfg.node.port)

    def start(self) -> "Node":
        """Check pynetdicom, recover, load the model, start delivering and triaging, then
        listen. Raises :class:`~cxr_triage.dicom_node.compat.UnsupportedPynetdicom` (a
        ``ConfigError``) on a pynetdicom other than 3.0.x, before anything starts."""
        cfg = self.cfg
        require_supported_pynetdicom()
        # highdicom narrates every copied module at INFO: one line per module per result.
        logging.getLogger("highdicom").setLevel(max(logging.WARNING, logging.getLogger().level))
        resumed = self.recover()
        triager = self._triager or load_triager(cfg)                  # one ONNX session
        meta = triager.meta
        # deliver <- triage <- receive: each stage is running before the one that feeds it
        self.deliverer = Deliverer(cfg, self.store, self.dirs.outbox, self.audit)
        self.worker = TriageWorker(cfg, self.store, self.dirs, self.quarantine, self.audit,
                                   triager, destinations=lambda: destinations_for(cfg))
        self.worker.on_result = self.deliverer.wake.set            # send without waiting a poll
        self.worker.delivery_progress = self.deliverer
        self.deliverer.start()
        self.worker.start()
        self.handler = StoreHandler(self.store, self.spool, self.quarantine, self.audit,
                                    cfg.node.ae_title, list(cfg.node.allowed_hosts),
                                    max_instance_bytes=cfg.node.max_instance_bytes)
        self.handler.on_stored = self.worker.wake.set                  # triage without waiting a poll
        self.ae, self.server = start_scp(cfg, self.handler)              # receive
        self.web = self._start_web(meta, triager)
        self.audit.record(A.APPLICATION_ACTIVITY, A.SUCCESS, A.APPLICATION_START,
                          called_ae=cfg.node.ae_title, port=self.port,
                          model=f"{meta.name} {meta.version}", detail=str(resumed))
        log.info("node listening", extra={"ae_title": cfg.node.ae_title, "port": self.port,
                                          "model": meta.name, "model_version": meta.version,
                                          "state_dir": str(self.dirs.root),
                                          "destinations": ",".join(destinations_for(cfg)) or "none",
                                          "shadow_mode": cfg.node.shadow_mode, **resumed})
        return self

    def _start_web(self, meta: Any, triager: Any) -> Any:
        """The worklist (``[web] enabled``); a web problem is logged, the DICOM node runs on."""
        if not self.cfg.web.enabled:
            return None
        try:
            # the web stack takes ~0.8 s to import: only a node with the worklist loads it
            from cxr_triage.dicom_node.web.app import start_web

            info = {"name": meta.name, "version": meta.version,
                    "operating_point": str(getattr(triager, "operating_point", "") or "")}
            # STOW-RS (receive/stow.py, FastAPI too) on the same server, behind its login
            from cxr_triage.dicom_node.receive.stow import StowReceiver

            assert self.handler is not None
            # drift gauges against the commissioning baseline (none without a baseline)
            return start_web(self.cfg, self.queries, model_info=info,
                             collectors=[DriftCollector(self.cfg, self.queries)], audit=self.audit,
                             services=[StowReceiver(self.handler).router()])
        except Exception as exc:  # noqa: BLE001 - port busy, no token on a public host...
            log.error("worklist not started", extra={"error": f"{type(exc).__name__}: {exc}"})
            return None

    def recover(self) -> dict[str, int]:
        """Crash leftovers: partial files removed, interrupted jobs re-queued, complete
        spool files that never reached the database imported (never acknowledged, but
        durable; the duplicate check makes a re-send harmless). The quarantine is brought
        within its bounds."""
        # a spool shared by several nodes (PostgreSQL store) holds their files in progress
        partials = self.spool.sweep_partials(min_age_s=SHARED_SPOOL_GRACE_S if self.store.shared else 0.0)
        out = self.store.recover()
        out["partials_removed"] = partials
        out["orphans_imported"] = self._import_orphans()
        out["quarantine_pruned"] = self.quarantine.enforce_bounds()
        return out

    def _import_orphans(self) -> int:
        known = self.store.known_instance_paths()
        n = 0
        for path in self.spool.files():
            if str(path) in known:
                continue
            try:
                hdr = dcmread(path, stop_before_pixels=True, defer_size="256 KB")
                if is_sr_class(str(hdr.SOPClassUID)):
                    continue
                digest = dataset_sha256(path)
                stored = self.store.stored_instance(str(hdr.SOPInstanceUID))
                if (stored is not None and stored.sha256 == digest
                        and stored.study_uid == str(hdr.StudyInstanceUID)):
                    path.unlink()                       # a second copy of a recorded instance
                    continue
                st = path.stat()
                self.store.add_instance(InstanceRecord(
                    str(hdr.SOPInstanceUID), str(hdr.StudyInstanceUID),
                    str(hdr.get("SeriesInstanceUID", "")) or None, str(hdr.SOPClassUID),
                    str(hdr.file_meta.get("TransferSyntaxUID", "")), str(path), st.st_size,
                    None, st.st_mtime, sha256=digest))
                n += 1
            except Exception as exc:  # noqa: BLE001 - leave it for an operator
                log.warning("orphan spool file not imported", extra={"file": path.name, "error": str(exc)})
        return n

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop accepting; let open associations, the study and the batches in hand finish
        until ``timeout_s``, then abort what is left: associations still open, sends still in
        flight (their deliveries resume at the next start). Returns within about
        ``timeout_s`` + 2 s whatever the peers do."""
        if self.handler:
            self.handler.accepting = False
        if self.server:
            self.server.shutdown()                      # closes the listening socket
        if self.web:
            self.web.stop()
        deadline = time.monotonic() + timeout_s
        while self.ae and self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.ae:
            for assoc in self.ae.active_associations:
                assoc.abort()
        if self.worker:                                 # the study in hand is finished...
            self.worker.stop()
            self.worker.join(max(0.5, deadline - time.monotonic()))
        if self.deliverer:                              # ...and its result sent, if it can be now
            self.deliverer.stop()
            self.deliverer.join(max(0.5, deadline - time.monotonic()))
            cut = self.deliverer.finish(deadline)       # silent peers: their sends aborted
            if cut:
                log.warning("sends still in flight at the stop were aborted; resumed at the next"
                            " start", extra={"destinations": ",".join(cut)})
        self.audit.record(A.APPLICATION_ACTIVITY, A.SUCCESS, A.APPLICATION_STOP,
                          called_ae=self.cfg.node.ae_title)
        log.info("node stopped", extra={"ae_title": self.cfg.node.ae_title})
        self.audit.close()
        self.store.dispose()

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """For tests and the demo: True once nothing is waiting to be triaged or sent."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.queries.oldest_pending() is None:
                return True
            time.sleep(0.1)
        return False


def serve(cfg: Config, stop_event: threading.Event) -> int:
    """Run until ``stop_event`` is set (SIGTERM/SIGINT in the CLI); 0 on a clean stop."""
    try:
        node = Node(cfg).start()
    except Exception as exc:  # noqa: BLE001 - model missing, port busy, bad TLS files...
        log.error("node cannot start", extra={"error": f"{type(exc).__name__}: {exc}"})
        print(f"cxr-triage serve: cannot start: {exc}", file=sys.stderr)
        return 2
    try:
        stop_event.wait()
    finally:
        log.info("stopping: no new associations, finishing in-flight work")
        node.stop(timeout_s=STOP_GRACE_S)
    return 0
