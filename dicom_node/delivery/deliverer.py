"""Returning results: C-STORE to the configured destinations, or a local outbox folder.

Each result's files were written once by the worker, so every retry sends the same SOP
Instance UIDs (a PACS keeps one copy). A delivery is **one object** (the SR, or one summary
image) to one destination, sent and retried on its own: a destination that refuses one object
still gets the others. Due deliveries to one destination go over one association.

- A destination that accepts no Comprehensive 3D SR gets the result as Comprehensive SR or
  Enhanced SR (``results/sr_classes.py``; the content fits both), written once beside the
  original with a derived, stable SOP Instance UID.
- A compressed file (the summary image) goes as it is where the destination accepts its
  transfer syntax, else decompressed (its codecs are lossless).
- A transient failure (no association, 0xA7xx Out of Resources, processing failure) backs
  off exponentially (``retry_initial_s`` doubling up to ``retry_max_s``); a *permanent
  refusal* (0xA9xx, 0xCxxx, SOP class not supported, no context for the object) is
  reported as ``refused`` and tried again only every ``refused_retry_s``. After
  ``dead_letter_after_s`` a delivery is *dead*; both show in ``cxr-triage status``.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections import defaultdict
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Callable

from pydicom import Dataset, dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.status import (
    STATUS_FAILURE,
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    code_to_category,
)

from cxr_triage.config import Config, parse_destination, resolve_path
from cxr_triage.contract.sop_classes import COMPREHENSIVE_3D_SR, is_sr_class
from cxr_triage.dicom_node.delivery.scu import associate
from cxr_triage.dicom_node.results.sr_classes import FALLBACKS, SR_CLASS_NAMES, as_sr_class, fits
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


def stored(status_code: int | None) -> bool:
    """A C-STORE response that means "stored": Success or a Warning (coercion of data
    elements, element discarded, data set does not match SOP class: PS3.4 Annex B.2.3),
    categorised by pynetdicom's storage status table."""
    if status_code is None:
        return False
    return code_to_category(status_code) in (STATUS_SUCCESS, STATUS_WARNING)


def destinations_for(cfg: Config) -> list[str]:
    """Where each new result goes: the DICOM destinations (or the outbox) and the RIS
    (``hl7:APP@host:port``). Shadow mode: only the shadow destinations (maybe none)."""
    if cfg.node.shadow_mode:
        return list(cfg.delivery.shadow_destinations)
    return (list(cfg.delivery.destinations) or [OUTBOX]) + [
        HL7_PREFIX + d for d in cfg.delivery.hl7_destinations]


@dataclass(frozen=True)
class Outcome:
    """What became of one delivery (one object to one destination)."""

    error: str | None = None                 # None: stored (Success or a Warning)
    permanent: bool = False                  # refused for good: not retried at the back-off rate
    detail: str = ""                         # e.g. "sent as Comprehensive SR", a warning status
    sent: tuple[ResultObject, ...] = ()      # what was sent (a fallback SR differs from the file)
    nbytes: int = 0                          # encoded size of what was sent
    send_ms: float = 0.0                     # C-STORE (or copy) time of this object


# Failure statuses worth retrying at the back-off rate: the destination is short of something
# now (PS3.4 B.2.3 Out of Resources; PS3.7 C processing failure, resource limitation,
# duplicate invocation). Every other failure says "this object will not be stored here".
_TRANSIENT_FAILURES = frozenset({0x0110, 0x0210, 0x0213})


def permanent_refusal(status_code: int) -> bool:
    """A C-STORE failure that retrying will not cure: 0xA9xx (data set does not match SOP
    class), 0xCxxx (cannot understand), SOP class not supported, not authorised, ... (not
    0xA7xx Out of Resources, nor the transient general failures)."""
    if code_to_category(status_code) != STATUS_FAILURE:
        return False
    return not (0xA700 <= status_code <= 0xA7FF or status_code in _TRANSIENT_FAILURES)


def status_text(code: int) -> str:
    """``status 0xA900 (Data Set Does Not Match SOP Class)``, named by pynetdicom's table."""
    name = STORAGE_SERVICE_CLASS_STATUS.get(code, ("", ""))[1]
    return f"status 0x{code:04X}" + (f" ({name})" if name else "")


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
            out[item.id] = Outcome(sent=item.objects, nbytes=nbytes, send_ms=_ms(start))
        except OSError as exc:
            out[item.id] = Outcome(f"outbox: {type(exc).__name__}: {exc}")
    return out


def send_hl7(batch: list[DueDelivery], destination: str, cfg: Config) -> dict[int, Outcome]:
    """One ORU^R01 per due result to the RIS ``APP@host:port`` (``delivery/hl7.py``), built
    from the result's SR file; {delivery id: outcome}."""
    from cxr_triage.dicom_node.delivery.hl7 import build_oru, send_mllp

    app, host, port = parse_destination(destination)
    out: dict[int, Outcome] = {}
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
        got = send_mllp(message, host, port, cfg.node.network_timeout_s)
        correction = "PredecessorDocumentsSequence" in sr
        detail = f"ORU^R01 {'correction (C)' if correction else 'preliminary (P)'}, ACK {got.ack_code}"
        out[item.id] = Outcome(got.error, got.permanent, detail if got.error is None else "", (),
                               len(message.encode("utf-8")), _ms(start))
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


_UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def _requested_contexts(ae: AE, objects: list[ResultObject]) -> None:
    """Per SOP class of the batch (and the fallback SR classes of a Comprehensive 3D SR): one
    context for each compressed transfer syntax the files are in, and one uncompressed."""
    by_class: dict[str, set[str]] = defaultdict(set)
    for obj in objects:
        by_class[obj.sop_class_uid].add(_transfer_syntax(obj.path))
        for fallback in FALLBACKS.get(obj.sop_class_uid, ()):
            by_class[fallback]
    for sop_class in sorted(by_class):
        for ts in sorted(by_class[sop_class] - set(_UNCOMPRESSED)):
            ae.add_requested_context(sop_class, [ts])
        ae.add_requested_context(sop_class, _UNCOMPRESSED)


def _transfer_syntax(path: str) -> str:
    try:
        return str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    except Exception:  # noqa: BLE001 - the send reports the unreadable file
        return str(ExplicitVRLittleEndian)


def _accepted(assoc: Any) -> dict[str, set[str]]:
    """{SOP class: the transfer syntaxes accepted for it}."""
    out: dict[str, set[str]] = defaultdict(set)
    for cx in assoc.accepted_contexts:
        out[str(cx.abstract_syntax)].update(str(ts) for ts in cx.transfer_syntax)
    return out


def send_c_store(batch: list[DueDelivery], destination: str, calling_ae: str,
                 timeout_s: float = 30.0, tls: ssl.SSLContext | None = None,
                 on_fallback: Callable[[DueDelivery, ResultObject], None] | None = None,
                 ) -> dict[int, Outcome]:
    """One association for the whole batch, each delivery (object) sent on its own:
    {delivery id: outcome}. A Comprehensive 3D SR goes as a fallback class when the
    destination accepts no context for it (or answers SOP Class Not Supported);
    ``on_fallback`` is told of each fallback object written."""
    ae_title, host, port = parse_destination(destination)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = min(timeout_s, 10.0)
    _requested_contexts(ae, [o for item in batch for o in item.objects])
    assoc = associate(ae, host, port, ae_title=ae_title, tls_args=(tls, host) if tls else None)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
        return {item.id: Outcome(f"association {why}") for item in batch}
    accepted = _accepted(assoc)
    out: dict[int, Outcome] = {}
    try:
        for item in batch:
            outcome = Outcome(sent=())
            for obj in item.objects:
                if not assoc.is_established:
                    outcome = Outcome("association lost")
                    break
                got = _send_object(assoc, accepted, item, obj, on_fallback)
                outcome = Outcome(got.error, got.permanent, "; ".join(filter(None, (outcome.detail, got.detail))),
                                  outcome.sent + got.sent, outcome.nbytes + got.nbytes,
                                  outcome.send_ms + got.send_ms)
                if got.error is not None:
                    break
            out[item.id] = outcome
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def _send_object(assoc: Any, accepted: dict[str, set[str]], item: DueDelivery, obj: ResultObject,
                 on_fallback: Callable[[DueDelivery, ResultObject], None] | None) -> Outcome:
    """C-STORE one result object: as it is, or as the first fallback SR class accepted."""
    start = time.perf_counter()
    try:
        ds = dcmread(obj.path)
    except Exception as exc:  # noqa: BLE001 - unreadable file
        return Outcome(f"{type(exc).__name__}: {exc}")
    classes = [obj.sop_class_uid] + [c for c in FALLBACKS.get(obj.sop_class_uid, ()) if fits(ds, c)]
    offered = [c for c in classes if c in accepted]
    if not offered:
        names = " or ".join(SR_CLASS_NAMES.get(c, c) for c in classes)
        return Outcome(f"refused: the destination accepts no {names}", permanent=True)
    last: Outcome | None = None
    for sop_class in offered:
        to_send, send = (obj, ds) if sop_class == obj.sop_class_uid else _fallback(ds, obj, sop_class)
        try:
            decompressed = _decompress_unless_accepted(send, accepted[sop_class])
            # what goes over the wire: the file's data set, or the decompressed pixels
            nbytes = len(send.PixelData) if decompressed else Path(to_send.path).stat().st_size
            status = assoc.send_c_store(send)
        except Exception as exc:  # noqa: BLE001 - encoding problem, lost connection
            return Outcome(f"{type(exc).__name__}: {exc}")
        code = getattr(status, "Status", None)
        fallback = ("sent as " + SR_CLASS_NAMES[sop_class]) if to_send is not obj else ""
        if decompressed:
            fallback = "; ".join(filter(None, (fallback, "sent decompressed")))
        if code is not None and stored(code):
            if to_send is not obj and on_fallback is not None:
                on_fallback(item, to_send)
            warning = status_text(code) if code != 0 else ""
            return Outcome(None, False, "; ".join(filter(None, (fallback, warning))), (to_send,),
                           nbytes, _ms(start))
        if code is None:
            return Outcome("no response")
        last = Outcome(f"{status_text(code)}" + (f" ({fallback})" if fallback else ""),
                       permanent=permanent_refusal(code))
        if code != 0x0122:           # SOP Class Not Supported: the next class may be
            break
    assert last is not None
    return last


def _fallback(ds: Dataset, obj: ResultObject, sop_class: str) -> tuple[ResultObject, Dataset]:
    """The fallback SR, and its file beside the original (written once: retries resend the
    same SOP Instance UID)."""
    fb = as_sr_class(ds, sop_class)
    path = Path(obj.path).with_name(f"{safe_name(str(fb.SOPInstanceUID))}.dcm")
    if not path.exists():
        buf = BytesIO()
        fb.save_as(buf, enforce_file_format=True)
        write_atomic(path, buf.getvalue())
    return ResultObject(str(fb.SOPInstanceUID), obj.series_uid, sop_class, str(path)), fb


def _decompress_unless_accepted(ds: Dataset, transfer_syntaxes: set[str]) -> bool:
    """Put the data set (in place) in a transfer syntax the destination accepted for its
    class: a compressed file the destination does not take is sent decompressed (the same
    SOP instance; lossless for the summary image's default codecs). True if decompressed."""
    ts = str(ds.file_meta.TransferSyntaxUID)
    if ts in transfer_syntaxes or not UID(ts).is_compressed:
        return False
    ds.decompress(generate_instance_uid=False)   # the same instance, only re-encoded
    return True


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


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
                elif dest.startswith(HL7_PREFIX):
                    outcome = send_hl7(batch, dest[len(HL7_PREFIX):], self.cfg)
                else:
                    outcome = send_c_store(batch, dest, self.cfg.node.ae_title,
                                           self.cfg.node.network_timeout_s, self.tls,
                                           on_fallback=self._fallback_written)
            except Exception as exc:  # noqa: BLE001 - never lose track of a batch
                outcome = {item.id: Outcome(f"{type(exc).__name__}: {exc}") for item in batch}
            # the send's timing is data (the latency benchmark reads it from the log)
            timing = {"send_started_at": started_at, "batch": len(batch),
                      "send_ms": round((time.perf_counter() - start) * 1000.0, 3)}
            for item in batch:
                self._record(item, outcome.get(item.id, Outcome("not attempted")), timing)
        return True

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
            detail = "; ".join(filter(None, (f"{len(sent)} object(s)", outcome.detail)))
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
