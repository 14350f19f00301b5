"""Returning results: C-STORE to the configured destinations, or a local outbox folder.

Each result's files were written once by the worker, so every retry sends the same SOP
Instance UIDs (a PACS keeps one copy). Due deliveries to one destination go over one
association. Failures back off exponentially (``retry_initial_s`` doubling up to
``retry_max_s``); after ``dead_letter_after_s`` a delivery is *dead* and shows in
``cxr-triage status``.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections import defaultdict
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from cxr_triage.config import Config, parse_destination, resolve_path
from cxr_triage.dicom_node.store import audit as A
from cxr_triage.dicom_node.store.jobs import OUTBOX, DueDelivery, JobStore
from cxr_triage.dicom_node.store.polling import PollingThread
from cxr_triage.dicom_node.store.spool import safe_name, write_atomic

log = logging.getLogger(__name__)



def stored(status_code: int | None) -> bool:
    """A C-STORE response that means "stored": Success or a Warning (coercion of data
    elements, element discarded, data set does not match SOP class: PS3.4 Annex B.2.3),
    categorised by pynetdicom's storage status table."""
    if status_code is None:
        return False
    return code_to_category(status_code) in (STATUS_SUCCESS, STATUS_WARNING)


def destinations_for(cfg: Config) -> list[str]:
    """Where each new result goes. Shadow mode: only the shadow destinations (maybe none)."""
    if cfg.node.shadow_mode:
        return list(cfg.delivery.shadow_destinations)
    return list(cfg.delivery.destinations) or [OUTBOX]


def send_to_outbox(batch: list[DueDelivery], outbox: Path) -> dict[int, str | None]:
    """Copy each result's files to ``outbox/<study>/``: {delivery id: error or None}."""
    out: dict[int, str | None] = {}
    for item in batch:
        try:
            for obj in item.objects:
                data = Path(obj.path).read_bytes()
                write_atomic(outbox / safe_name(item.study_uid) / Path(obj.path).name, data)
            out[item.id] = None
        except OSError as exc:
            out[item.id] = f"outbox: {type(exc).__name__}: {exc}"
    return out


def tls_client_context(cfg: Config) -> ssl.SSLContext | None:
    """Client TLS for deliveries (``[delivery] tls_*``); the destination's certificate is
    verified against ``tls_ca`` (or the system CAs), its host name is not (DICOM peers are
    usually addressed by IP)."""
    d = cfg.delivery
    if not d.tls_enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                     cafile=str(resolve_path(cfg, d.tls_ca)) if d.tls_ca else None)
    ctx.check_hostname = False
    if d.tls_cert:
        ctx.load_cert_chain(resolve_path(cfg, d.tls_cert),
                            resolve_path(cfg, d.tls_key) if d.tls_key else None)
    return ctx


def send_c_store(batch: list[DueDelivery], destination: str, calling_ae: str,
                 timeout_s: float = 30.0, tls: ssl.SSLContext | None = None) -> dict[int, str | None]:
    """One association for the whole batch; {delivery id: error or None}."""
    ae_title, host, port = parse_destination(destination)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = min(timeout_s, 10.0)
    for sop_class in sorted({o.sop_class_uid for item in batch for o in item.objects}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=(tls, host) if tls else None)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
        return {item.id: f"association {why}" for item in batch}
    out: dict[int, str | None] = {}
    try:
        for item in batch:
            error = None
            for obj in item.objects:
                if not assoc.is_established:
                    error = "association lost"
                    break
                try:
                    status = assoc.send_c_store(dcmread(obj.path))
                except Exception as exc:  # noqa: BLE001 - unreadable file, encoding problem
                    error = f"{type(exc).__name__}: {exc}"
                    break
                code = getattr(status, "Status", None)
                if not stored(code):
                    error = "no response" if code is None else f"status 0x{code:04X}"
                    break
            out[item.id] = error
    finally:
        if assoc.is_established:
            assoc.release()
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

    def recover(self) -> None:
        self.store.recover(studies=False, deliveries=True)

    def run_once(self) -> bool:
        """Send everything due now; False when nothing was due."""
        due = self.store.due_deliveries()
        if not due:
            return False
        by_dest: dict[str, list[DueDelivery]] = defaultdict(list)
        for item in due:
            by_dest[item.destination].append(item)
        for dest, batch in by_dest.items():
            started_at, start = time.time(), time.perf_counter()
            try:
                if dest == OUTBOX:
                    outcome = send_to_outbox(batch, self.outbox)
                else:
                    outcome = send_c_store(batch, dest, self.cfg.node.ae_title,
                                           self.cfg.node.network_timeout_s, self.tls)
            except Exception as exc:  # noqa: BLE001 - never lose track of a batch
                outcome = {item.id: f"{type(exc).__name__}: {exc}" for item in batch}
            # the send's timing is data (the latency benchmark reads it from the log)
            timing = {"send_started_at": started_at, "batch": len(batch),
                      "send_ms": round((time.perf_counter() - start) * 1000.0, 3)}
            for item in batch:
                self._record(item, outcome.get(item.id, "not attempted"), timing)
        return True

    def _record(self, item: DueDelivery, error: str | None, timing: dict[str, float]) -> None:
        d = self.cfg.delivery
        ctx = dict(study_uid=item.study_uid, destination=item.destination, delivery_id=item.id,
                   attempt=item.attempts + 1, **timing)
        if error is None:
            self.store.delivery_succeeded(item.id, detail=f"{len(item.objects)} object(s)")
            log.info("result delivered", extra=ctx)
        else:
            state = self.store.delivery_failed(item.id, error, d.retry_initial_s, d.retry_max_s,
                                               d.dead_letter_after_s)
            log.warning("delivery failed", extra={**ctx, "error": error, "state": state})
        for obj in item.objects:
            self.audit.record(A.INSTANCES_TRANSFERRED, A.SUCCESS if error is None else A.MINOR_FAILURE,
                              action="R", direction="sent", destination=item.destination,
                              calling_ae=self.cfg.node.ae_title, study_uid=item.study_uid,
                              sop_instance_uid=obj.sop_instance_uid, sop_class_uid=obj.sop_class_uid,
                              detail=error)
