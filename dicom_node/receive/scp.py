"""The receiving side: a pynetdicom application entity that stores and enqueues, nothing more.

The C-STORE handler does one fast thing (pynetdicom's own advice): write the encoded dataset
as received to the spool (fsync, atomic rename), record it in the job store, and only then
answer Success. Decoding and inference happen elsewhere (worker.py). Any failure to store
durably answers Out of Resources (0xA700), never Success. Malformed input is quarantined and
answered with an error status; the node keeps serving.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from io import BytesIO
from typing import Any, Callable

from pydicom import dcmread
from pydicom import uid as dcm_uid
from pynetdicom import AE, evt
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import
from pynetdicom.status import Status
from pynetdicom.transport import ThreadedAssociationServer

from cxr_triage.config import Config
from cxr_triage.contract.sop_classes import TRIAGE_SOP_CLASSES, is_sr_class
from cxr_triage.dicom_node.store import audit as A
from cxr_triage.dicom_node.store.jobs import InstanceRecord, JobStore
from cxr_triage.dicom_node.store.spool import Quarantine, Spool

log = logging.getLogger(__name__)

# The classes the triage reads (cxr_triage.contract.sop_classes); every other storage class
# is accepted and recorded as not assessable (a router sends whole studies), except SR, which
# is skipped (loop prevention).

# What the inference reader decodes (pydicom pixel handlers + pylibjpeg/openjpeg/pyjpegls).
DECODABLE_TRANSFER_SYNTAXES = [
    dcm_uid.ExplicitVRLittleEndian,
    dcm_uid.ImplicitVRLittleEndian,
    dcm_uid.DeflatedExplicitVRLittleEndian,
    dcm_uid.ExplicitVRBigEndian,
    dcm_uid.JPEGLossless,
    dcm_uid.JPEGLosslessSV1,
    dcm_uid.JPEGBaseline8Bit,
    dcm_uid.JPEGExtended12Bit,
    dcm_uid.JPEGLSLossless,
    dcm_uid.JPEGLSNearLossless,
    dcm_uid.JPEG2000Lossless,
    dcm_uid.JPEG2000,
    dcm_uid.HTJ2KLossless,
    dcm_uid.HTJ2KLosslessRPCL,
    dcm_uid.HTJ2K,
    dcm_uid.RLELossless,
]

# C-STORE response statuses (PS3.4 Annex B.2.3), named as pynetdicom's storage status table
# names them (pynetdicom.status.STORAGE_SERVICE_CLASS_STATUS): Success, Refused: Out of
# Resources, Error: Data Set Does Not Match SOP Class, Error: Cannot Understand.
SUCCESS = int(Status.SUCCESS)
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000

ACSE_TIMEOUT_S = 5.0  # longest wait for the A-ASSOCIATE-RQ after a connection opens

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _valid_uid(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID_RE.match(value))


class StoreHandler:
    """Event handlers bound to the AE: C-ECHO, C-STORE, association checks and audit."""

    def __init__(self, store: JobStore, spool: Spool, quarantine: Quarantine, audit: A.AuditLog,
                 ae_title: str, allowed_hosts: list[str] | None = None):
        self.store = store
        self.spool = spool
        self.quarantine = quarantine
        self.audit = audit
        self.ae_title = ae_title
        self.allowed_hosts = set(allowed_hosts or [])
        self.accepting = True
        self.on_stored: Callable[[], None] | None = None  # e.g. wake the triage worker

    def handlers(self) -> list[tuple[evt.NotificationEvent | evt.InterventionEvent, Callable[..., Any]]]:
        return [
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_REJECTED, self.on_rejected),
        ]

    # -- association -------------------------------------------------------------------
    @staticmethod
    def _peer(event: Any) -> tuple[str, str]:
        req = event.assoc.requestor
        return (req.ae_title or "").strip(), str(req.address)

    def on_requested(self, event: Any) -> None:
        """Host allow-list and shutdown: reject before negotiation (pynetdicom checks AE titles)."""
        assoc = event.assoc
        host = str(assoc.requestor.address)
        calling = (assoc.requestor.primitive.calling_ae_title or "").strip()
        if self.allowed_hosts and host not in self.allowed_hosts:
            self._security_alert(calling, host, "host not allowed")
            assoc.acse.send_reject(0x01, 0x01, 0x01)  # permanent, service user, no reason given
            assoc.kill()
        elif not self.accepting:
            log.info("association refused: node is stopping", extra={"calling_ae": calling})
            assoc.acse.send_reject(0x02, 0x03, 0x01)  # transient, temporary congestion
            assoc.kill()

    def on_rejected(self, event: Any) -> None:
        calling, host = self._peer(event)
        prim = event.assoc.acceptor.primitive
        diag = getattr(prim, "diagnostic", None)
        reasons = {0x03: "calling AE title not recognised", 0x07: "called AE title not recognised",
                   0x02: "too many associations"}
        reason = reasons.get(diag, f"diagnostic {diag}") if isinstance(diag, int) else f"diagnostic {diag}"
        if getattr(prim, "result_source", None) == 0x03:
            reason = "too many associations"
        self._security_alert(calling, host, reason)

    def _security_alert(self, calling: str, host: str, reason: str) -> None:
        log.warning("association rejected", extra={"calling_ae": calling, "peer": host, "reason": reason})
        self.audit.record(A.SECURITY_ALERT, A.MINOR_FAILURE, calling_ae=calling, peer=host,
                          called_ae=self.ae_title, detail=f"association rejected: {reason}")

    # -- services ----------------------------------------------------------------------
    def on_echo(self, event: Any) -> int:
        return SUCCESS

    def on_store(self, event: Any) -> int:
        """Spool, enqueue, then acknowledge. Never raises: pynetdicom would answer 0xC211."""
        calling, host = self._peer(event)
        req = event.request
        sop_uid = str(req.AffectedSOPInstanceUID or "")
        sop_class = str(req.AffectedSOPClassUID or "")
        ctx: dict[str, Any] = dict(calling_ae=calling, peer=host, sop_instance_uid=sop_uid,
                                   sop_class_uid=sop_class)
        try:
            raw = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # noqa: BLE001 - anything odd from the peer
            return self._reject(None, CANNOT_UNDERSTAND, f"unreadable dataset: {exc}", ctx)
        try:
            hdr = dcmread(BytesIO(raw), stop_before_pixels=True,
                          specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                         "SOPClassUID"])
            study_uid = str(hdr.get("StudyInstanceUID", "") or "").strip()
            series_uid = str(hdr.get("SeriesInstanceUID", "") or "").strip()
            ds_sop_uid = str(hdr.get("SOPInstanceUID", "") or "").strip()
            ts = str(hdr.file_meta.get("TransferSyntaxUID", "") or "")
        except Exception as exc:  # noqa: BLE001 - malformed header of any kind
            return self._reject(raw, CANNOT_UNDERSTAND, f"cannot parse dataset: {exc}", ctx)
        if not _valid_uid(study_uid) or not _valid_uid(sop_uid):
            return self._reject(raw, DATASET_MISMATCH, "missing or invalid Study/SOP Instance UID", ctx)
        if ds_sop_uid and ds_sop_uid != sop_uid:
            return self._reject(raw, DATASET_MISMATCH, "SOP Instance UID differs from the request", ctx)
        ctx["study_uid"] = study_uid

        if is_sr_class(sop_class) or self.store.is_own_output(sop_uid, series_uid):
            # Acknowledge (a router must not retry it forever) but never triage: a PACS that
            # sends results back would otherwise loop.
            self.audit.record(A.INSTANCES_TRANSFERRED, A.SUCCESS, A.INSTANCES_TRANSFERRED,
                              action="R", direction="received", detail="ignored: SR or own output", **ctx)
            log.info("instance ignored (SR or own output)", extra=ctx)
            return SUCCESS

        try:
            path = self.spool.store(study_uid, sop_uid, raw)
            self.store.add_instance(InstanceRecord(
                sop_instance_uid=sop_uid, study_uid=study_uid, series_uid=series_uid or None,
                sop_class_uid=sop_class, transfer_syntax=ts, path=str(path), size=len(raw),
                calling_ae=calling, received_at=time.time()))
            if self.on_stored is not None:
                self.on_stored()
        except Exception as exc:  # noqa: BLE001 - disk full, read-only, locked database...
            log.error("cannot store instance: answering Out of Resources",
                      extra={**ctx, "error": f"{type(exc).__name__}: {exc}"})
            self.audit.record(A.INSTANCES_TRANSFERRED, A.SERIOUS_FAILURE, action="C",
                              direction="received", status=f"0x{OUT_OF_RESOURCES:04X}",
                              detail=f"{type(exc).__name__}", **ctx)
            return OUT_OF_RESOURCES
        self.audit.record(A.INSTANCES_TRANSFERRED, A.SUCCESS, action="C", direction="received",
                          status="0x0000", size=len(raw), **ctx)
        log.info("instance stored", extra=ctx)
        return SUCCESS

    def _reject(self, raw: bytes | None, status: int, reason: str, ctx: dict[str, Any]) -> int:
        qpath = self.quarantine.put(raw, reason, status=f"0x{status:04X}", **ctx)
        log.warning("instance refused and quarantined",
                    extra={**ctx, "status": f"0x{status:04X}", "reason": reason, "quarantine": qpath.name})
        self.audit.record(A.INSTANCES_TRANSFERRED, A.MINOR_FAILURE, action="C", direction="received",
                          status=f"0x{status:04X}", detail=reason, quarantine=qpath.name, **ctx)
        return status


def build_ae(cfg: Config) -> AE:
    """The acceptor AE: Verification, triage classes (decodable syntaxes), other storage."""
    node = cfg.node
    ae = AE(ae_title=node.ae_title)
    ae.require_called_aet = True
    ae.require_calling_aet = list(node.allowed_calling_aets)
    ae.maximum_associations = node.max_associations
    ae.maximum_pdu_size = node.max_pdu_size
    ae.network_timeout = node.network_timeout_s
    # pynetdicom holds a connection's association slot until the ACSE timeout even when the
    # peer closes without an A-ASSOCIATE-RQ (a TCP health check, a port scan, random bytes):
    # ten of them refused every sender for 30 s. A real peer asks at once after connecting.
    ae.acse_timeout = min(node.network_timeout_s, ACSE_TIMEOUT_S)
    ae.dimse_timeout = node.network_timeout_s
    ae.add_supported_context(Verification)
    for uid in TRIAGE_SOP_CLASSES:
        ae.add_supported_context(uid, DECODABLE_TRANSFER_SYNTAXES)
    for cx in StoragePresentationContexts:
        if cx.abstract_syntax is not None and cx.abstract_syntax not in TRIAGE_SOP_CLASSES:
            ae.add_supported_context(cx.abstract_syntax, dcm_uid.AllTransferSyntaxes)
    return ae


class _DeferredHandshakeContext(ssl.SSLContext):
    """pynetdicom wraps each accepted socket in its accept loop, and the default handshake on
    wrap made one connection that never spoke TLS freeze every later connection. Here the
    handshake happens on the association's first read, in its own thread, under its timeouts."""

    def wrap_socket(self, sock: socket.socket, server_side: bool = False,
                    do_handshake_on_connect: bool = True, suppress_ragged_eofs: bool = True,
                    server_hostname: str | bytes | None = None,
                    session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        return super().wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False,
                                   suppress_ragged_eofs=suppress_ragged_eofs,
                                   server_hostname=server_hostname, session=session)


def tls_context(cfg: Config) -> ssl.SSLContext | None:
    """Server TLS from config (TLS 1.2+); with ``tls_ca`` set, client certificates are
    required and only that CA is trusted for them (never the operating system's store)."""
    node = cfg.node
    if not node.tls_enabled:
        return None
    from cxr_triage.config import resolve_path

    ctx = _DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(resolve_path(cfg, node.tls_cert), resolve_path(cfg, node.tls_key))
    if node.tls_ca:
        ctx.load_verify_locations(cafile=str(resolve_path(cfg, node.tls_ca)))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def start_scp(cfg: Config, handler: StoreHandler) -> tuple[AE, ThreadedAssociationServer]:
    """Start listening (non-blocking); returns the AE and its server."""
    ae = build_ae(cfg)
    server = ae.start_server((cfg.node.host, cfg.node.port), block=False,
                             ssl_context=tls_context(cfg), evt_handlers=list(handler.handlers()))
    if server is None:  # pragma: no cover - block=False always returns the server
        raise RuntimeError("pynetdicom returned no server")
    return ae, server
