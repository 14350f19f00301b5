"""Returning results: the deliverer thread, which sends what is due and records every attempt.

Each result's files were written once by the worker, so every retry sends the same SOP
Instance UIDs (a PACS keeps one copy). A delivery is **one object** (the SR, or one summary
image) to one destination, sent and retried on its own: a destination that refuses one object
still gets the others. Each run (:meth:`Deliverer.run_once`) takes every delivery due now and
groups them by destination, and each destination is served by its own thread (a *lane*,
``delivery/lanes.py``): a silent or slow peer never delays another's results. A DICOM
destination gets them all over **one association** (``delivery/dicom_send.py``, fallback SR
classes proposed in it too), the RIS one ORU^R01 per result over MLLP (``delivery/hl7.py``),
the local outbox a copy of each file.

- A transient failure (no association, 0xA7xx Out of Resources, processing failure) backs
  off exponentially (``retry_initial_s`` doubling up to ``retry_max_s``); a *permanent
  refusal* (0xA9xx, 0xCxxx, SOP class not supported, no context for the object) is
  reported as ``refused`` and tried again only every ``refused_retry_s``. After
  ``dead_letter_after_s`` a delivery is *dead*; both show in ``cxr-triage status``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from pydicom import dcmread

from cxr_triage.config import DICOMWEB_PREFIX, Config, parse_destination
from cxr_triage.contract.sop_classes import COMPREHENSIVE_3D_SR, is_sr_class
from cxr_triage.dicom_node.delivery.dicom_send import (
    Outcome,
    elapsed_ms,
    expected_contexts,
    send_c_store,
    tls_client_context,
)
from cxr_triage.dicom_node.delivery.lanes import InFlight, Lanes
from cxr_triage.dicom_node.delivery.stow_send import send_stow
from cxr_triage.dicom_node.store import audit as A
from cxr_triage.dicom_node.store.jobs import (
    HL7_PREFIX,
    OUTBOX,
    REFUSED,
    DueDelivery,
    JobStore,
    ResultObject,
)
from cxr_triage.dicom_node.store.polling import PollingThread
from cxr_triage.dicom_node.store.spool import safe_name, write_atomic

log = logging.getLogger(__name__)

NEVER_MADE = "its object was never made (the node stopped before writing it)"


def destinations_for(cfg: Config) -> list[str]:
    """Where each new result goes: the DICOM destinations (or the outbox) and the RIS
    (``hl7:APP@host:port``). Shadow mode: only the shadow destinations (maybe none)."""
    if cfg.node.shadow_mode:
        return list(cfg.delivery.shadow_destinations)
    return (list(cfg.delivery.destinations) or [OUTBOX]) + [
        HL7_PREFIX + d for d in cfg.delivery.hl7_destinations]


def send_to_outbox(batch: list[DueDelivery], outbox: Path) -> dict[int, Outcome]:
    """Copy each delivery's file(s) to ``outbox/<study>/``: {delivery id: outcome}."""
    out: dict[int, Outcome] = {}
    for item in batch:
        start, nbytes = time.perf_counter(), 0
        try:
            for obj in item.objects:
                data = Path(obj.path).read_bytes()
                nbytes += len(data)
                write_atomic(outbox / safe_name(item.study_uid) / Path(obj.path).name, data)
            out[item.id] = Outcome(sent=item.objects, nbytes=nbytes, send_ms=elapsed_ms(start))
        except OSError as exc:
            out[item.id] = Outcome(f"outbox: {type(exc).__name__}: {exc}")
    return out


def send_hl7(batch: list[DueDelivery], destination: str, cfg: Config,
             track: Callable[[Any], None] | None = None) -> dict[int, Outcome]:
    """One ORU^R01 per due result to the RIS ``APP@host:port`` (``delivery/hl7.py``), built
    from the result's SR file; {delivery id: outcome}. After a connection that failed or got no
    acknowledgement the rest of the batch is not tried (each would wait the network time-out
    again): it fails with the same cause. ``track`` is given each MLLP socket (so a stop can
    close it)."""
    # hl7apy takes ~0.3 s to import: only a node with hl7_destinations loads it
    from cxr_triage.dicom_node.delivery.hl7 import build_oru, send_mllp

    app, host, port = parse_destination(destination)
    out: dict[int, Outcome] = {}
    unreachable: str | None = None
    for item in batch:
        start = time.perf_counter()
        srs = sorted((o for o in item.objects if is_sr_class(o.sop_class_uid)),
                     key=lambda o: o.sop_class_uid != COMPREHENSIVE_3D_SR)
        if not srs:
            out[item.id] = Outcome("no result SR to report", permanent=True)
            continue
        try:
            sr = dcmread(srs[0].path)
            message = build_oru(sr, control_id=f"CXRT{item.id}", sending_application=cfg.node.ae_title,
                                receiving_application=app,
                                sending_facility=cfg.delivery.hl7_sending_facility)
        except Exception as exc:  # noqa: BLE001 - unreadable SR, a message that does not validate
            out[item.id] = Outcome(f"HL7 message not built: {type(exc).__name__}", permanent=True)
            continue
        if unreachable is not None:        # the RIS did not answer the previous message
            out[item.id] = Outcome(f"{unreachable} (not sent: no answer to the previous message)")
            continue
        got = send_mllp(message, host, port, cfg.node.network_timeout_s, track)
        if got.error is not None and got.error.startswith("MLLP:") and "not understood" not in got.error:
            unreachable = got.error
        correction = "PredecessorDocumentsSequence" in sr
        detail = f"ORU^R01 {'correction (C)' if correction else 'preliminary (P)'}, ACK {got.ack_code}"
        out[item.id] = Outcome(got.error, got.permanent, detail if got.error is None else "", (),
                               len(message.encode("utf-8")), elapsed_ms(start))
    return out


class Deliverer(PollingThread):
    """Sends due deliveries, grouped per destination; records every attempt."""

    error_msg = "deliverer error; retrying"

    def __init__(self, cfg: Config, store: JobStore, outbox: Path, audit: A.AuditLog,
                 poll_s: float = 0.25):
        super().__init__("deliverer", store, poll_s)
        self.cfg = cfg
        self.outbox = outbox
        self.audit = audit
        self.tls = tls_client_context(cfg)
        self._lanes: Lanes | None = None
        # what a result's summary image will need: proposed with its SR already
        self._expected = expected_contexts(cfg.delivery.summary_image,
                                           cfg.delivery.summary_image_compression)
        # passes that found nothing due, and batches sent: what the worker waits on before
        # making a result's summary images (:meth:`wait_for_progress`)
        self._progress = threading.Condition()
        self._steps = 0
        self._handed = 0            # deliveries handed to the lanes and not yet recorded

    def progress(self) -> int:
        """A counter that moves when a batch was sent or a pass found nothing due."""
        with self._progress:
            return self._steps

    def wait_for_progress(self, mark: int, timeout_s: float) -> bool:
        """Until :meth:`progress` has moved past ``mark`` (a send finished, or nothing was due),
        at most ``timeout_s``: the worker keeps the CPU to itself meanwhile, so a just-committed
        SR is not sent while the summary image is being rendered (both need the GIL; the SR's
        C-STORE took ~50 ms instead of ~5 ms beside the rendering). False on time-out."""
        with self._progress:
            return self._progress.wait_for(lambda: self._steps > mark, timeout_s)

    def _step(self, handed: int = 0, sent: int = 0, idle: bool = False) -> None:
        """Count deliveries handed to / sent by the lanes; the counter moves on a send, or on
        an ``idle`` pass (nothing due) while the lanes hold nothing."""
        with self._progress:
            self._handed += handed - sent
            if sent or (idle and self._handed <= 0):
                self._steps += 1
                self._progress.notify_all()

    def run(self) -> None:
        """The thread: each destination's batches go to its own lane (``delivery/lanes.py``)."""
        self._lanes = Lanes(self.send_batch, self.store.close)
        super().run()

    def finish(self, deadline: float) -> list[str]:
        """After :meth:`stop` and ``join``: what is due now (the result of the study finished
        during the stop) goes to the lanes, which send until ``deadline``
        (``time.monotonic()``); then every send still in flight is cut (``delivery/lanes.py``).
        Returns the destinations whose send was cut."""
        if self._lanes is None:
            return []
        try:
            self.run_once()
        except Exception as exc:  # noqa: BLE001 - it stays queued for the next start
            log.warning("last delivery pass failed", extra={"error": str(exc)})
        return self._lanes.stop(deadline)

    def recover(self) -> None:
        if self._lanes is None:          # a lane's claimed deliveries are in its hands
            self.store.recover(studies=False, deliveries=True)

    def run_once(self) -> bool:
        """Claim everything due now, one batch per destination: handed to the destination's
        lane in the deliverer thread, sent here and now otherwise. False when nothing was due."""
        due = self.store.due_deliveries()
        if not due:
            self._step(idle=True)
            return False
        by_dest: dict[str, list[DueDelivery]] = defaultdict(list)
        for item in due:
            by_dest[item.destination].append(item)
        for dest, batch in by_dest.items():
            self._step(handed=len(batch))
            if self._lanes is not None:
                self._lanes.put(dest, batch)
            else:
                self.send_batch(dest, batch, InFlight())
        return True

    def send_batch(self, dest: str, batch: list[DueDelivery], in_flight: InFlight) -> None:
        """Send one destination's batch and record each delivery's outcome; a send cut by a
        stop (``in_flight.cut``) records nothing (its deliveries are resumed at the next start)."""
        started_at, start = time.time(), time.perf_counter()
        try:
            outcome = self._send(dest, batch, in_flight)
        except Exception as exc:  # noqa: BLE001 - never lose track of a batch
            outcome = {item.id: Outcome(f"{type(exc).__name__}: {exc}") for item in batch}
        if in_flight.cut_done.is_set():
            log.warning("delivery interrupted by the stop: resumed at the next start",
                        extra={"destination": dest, "batch": len(batch)})
            self._step(sent=len(batch))
            return
        # the send's timing is data (the latency benchmark reads it from the log)
        timing = {"send_started_at": started_at, "batch": len(batch), "send_ms": elapsed_ms(start)}
        try:
            for item in batch:
                self._record(item, outcome.get(item.id, Outcome("not attempted")), timing)
        finally:
            self._step(sent=len(batch))

    def _send(self, dest: str, batch: list[DueDelivery], in_flight: InFlight) -> dict[int, Outcome]:
        """The outcome of each delivery of ``batch`` sent to ``dest`` by its protocol. A
        delivery whose object was never made (the node stopped between a result's commit and
        its summary image: ``JobStore.complete_study(later=...)``) is a permanent failure."""
        never_made = {item.id: Outcome(NEVER_MADE, permanent=True) for item in batch
                      if not item.objects and not dest.startswith(HL7_PREFIX)}
        batch = [item for item in batch if item.id not in never_made]
        if not batch:
            return never_made
        if dest == OUTBOX:
            outcome = send_to_outbox(batch, self.outbox)
        elif dest.startswith(HL7_PREFIX):
            outcome = send_hl7(batch, dest[len(HL7_PREFIX):], self.cfg, in_flight.track)
        elif dest.startswith(DICOMWEB_PREFIX):        # STOW-RS (delivery/stow_send.py)
            outcome = send_stow(batch, dest, self.cfg)
        else:
            if in_flight.held is not None:
                in_flight.held.expected = self._expected
            outcome = send_c_store(batch, dest, self.cfg.node.ae_title,
                                   self.cfg.node.network_timeout_s, self.tls,
                                   on_fallback=self._fallback_written, track=in_flight.track,
                                   held=in_flight.held)
        return {**outcome, **never_made}

    def _fallback_written(self, item: DueDelivery, obj: ResultObject) -> None:
        """A fallback SR belongs to the result too (own-output check, study page)."""
        self.store.add_result_object(item.result_id, obj)

    def _record(self, item: DueDelivery, outcome: Outcome, timing: dict[str, float]) -> None:
        d = self.cfg.delivery
        first = item.objects[0] if item.objects else None
        ctx = dict(study_uid=item.study_uid, destination=item.destination, delivery_id=item.id,
                   attempt=item.attempts + 1,
                   sop_instance_uid=first.sop_instance_uid if first else None,
                   sop_class_uid=first.sop_class_uid if first else None, **timing)
        error = outcome.error
        if error is None:
            sent = outcome.sent or item.objects
            # an HL7 delivery sends one message, not the result's objects: its detail says which
            count = "" if item.destination.startswith(HL7_PREFIX) else f"{len(sent)} object(s)"
            detail = "; ".join(filter(None, (count, outcome.detail)))
            self.store.delivery_succeeded(item.id, detail=detail)
            log.info("result delivered", extra={**ctx, "object_ms": outcome.send_ms,
                                                "bytes": outcome.nbytes, "detail": outcome.detail})
        else:
            state = self.store.delivery_failed(item.id, error, d.retry_initial_s, d.retry_max_s,
                                               d.dead_letter_after_s, permanent=outcome.permanent,
                                               refused_retry_s=d.refused_retry_s)
            message = "delivery refused" if state == REFUSED else "delivery failed"
            log.warning(message, extra={**ctx, "error": error, "state": state})
        if item.destination.startswith(HL7_PREFIX):
            # IHE ATNA 110106 Export: the result reported to the RIS (UIDs only)
            self.audit.record(A.EXPORT, A.SUCCESS if error is None else A.MINOR_FAILURE,
                              action="R", direction="sent", destination=item.destination,
                              calling_ae=self.cfg.node.ae_title, study_uid=item.study_uid,
                              detail=error or outcome.detail)
            return
        for obj in (outcome.sent if error is None and outcome.sent else item.objects):
            self.audit.record(A.INSTANCES_TRANSFERRED, A.SUCCESS if error is None else A.MINOR_FAILURE,
                              action="R", direction="sent", destination=item.destination,
                              calling_ae=self.cfg.node.ae_title, study_uid=item.study_uid,
                              sop_instance_uid=obj.sop_instance_uid, sop_class_uid=obj.sop_class_uid,
                              detail=error)
