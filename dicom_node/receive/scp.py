"""The receiving side: a pynetdicom application entity that stores and enqueues, nothing more.

The C-STORE handler does one fast thing (pynetdicom's own advice): put the data set as
received into the spool (fsync, atomic rename), record it in the job store, and only then
answer Success. Decoding and inference happen elsewhere (worker.py). Any failure to store
durably answers Out of Resources (0xA700), never Success. Malformed input is quarantined and
answered with an error status; the node keeps serving.

Memory: pynetdicom streams each incoming C-STORE data set to a file
(``_config.STORE_RECV_CHUNKED_DATASET``; the handler gets ``event.dataset_path``), created
here in ``<spool>/.incoming/`` (:func:`_incoming_file`), so the handler reads only the header
and *moves* the file into the spool: an instance is never held in memory whole. A data set
larger than ``[node] max_instance_bytes`` stops being written once over the limit and is
refused with 0xA700.

Duplicates: concurrent senders of one instance each have their own incoming file; the step
that decides and records (compare SHA-256, move, insert) is serialised per SOP Instance UID.
An identical re-send changes nothing; other content under a known SOP Instance UID is a
*changed instance* (:meth:`StoreHandler._commit`): kept beside the old file, the study is
re-opened, and the conflict audited.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import ssl
import tempfile
import threading
import time
import weakref
import zlib
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, Callable

from pydicom import dcmread
from pydicom import uid as dcm_uid
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import
from pynetdicom.status import Status
from pynetdicom.transport import ThreadedAssociationServer

from cxr_triage.config import Config
from cxr_triage.contract.sop_classes import TRIAGE_SOP_CLASSES, is_sr_class
from cxr_triage.dicom_node.store import audit as A
from cxr_triage.dicom_node.store.jobs import InstanceRecord, JobStore
from cxr_triage.dicom_node.store.spool import PART, Quarantine, Spool, dataset_sha256

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


# -- streaming C-STORE data sets to the spool ----------------------------------------------
# pynetdicom 3.0 (dimse_messages.DIMSEMessage.decode_msg), with STORE_RECV_CHUNKED_DATASET,
# opens ``NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")`` in the system temp
# folder for each C-STORE-RQ, writes the preamble, a File Meta Information it builds and every
# data set fragment as it arrives (``write`` then ``file.flush()``), calls the EVT_C_STORE
# handler with ``event.dataset_path``, then closes the file and unlinks it (ignoring OSError).
# A file on another file system could only be copied into the spool, and a transfer cut off
# midway is never removed there; so for this node's AEs the file is made in
# ``<spool>/.incoming/`` instead (same file system: the handler renames it into the spool;
# the crash sweep removes leftovers), and stops growing past the size limit. The factory runs
# in the association's DUL thread, which is how it knows the AE; any other AE in the process
# gets pynetdicom's own temporary file.

class _IncomingFile:
    """The file pynetdicom streams one C-STORE data set into (its ``NTF`` protocol: ``name``,
    ``write``, ``file.flush()``, ``close``). It never raises: pynetdicom writes from the DUL
    thread, where an exception would abort the association without a C-STORE response. A
    write error (disk full) or a data set over the size limit stops the writing (the file is
    emptied to give the space back) and is answered by the handler with 0xA700."""

    def __init__(self, folder: Path, max_bytes: int):
        self.max_bytes = max_bytes
        self.received = 0                       # bytes written by pynetdicom, kept or not
        self.over_limit = False
        self.error: OSError | None = None
        self.file = self                        # pynetdicom calls ``.file.flush()``
        self._fp: IO[bytes] | None = None
        # SHA-256 of the data set as it streams past (spool.dataset_sha256 of the finished
        # file, without reading it back): what follows the File Meta Information, whose
        # end the group length element (always first, as pydicom writes it) tells.
        self._sha = hashlib.sha256()
        self._head: bytearray | None = bytearray()
        self._meta_end: int | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, self.name = tempfile.mkstemp(prefix=".recv-", suffix=PART, dir=folder)
        except OSError as exc:                  # no room for even an empty file
            self.name = str(folder / f".recv-failed-{os.getpid()}-{id(self)}{PART}")
            self.error = exc
            return
        os.fchmod(fd, 0o640)
        self._fp = os.fdopen(fd, "wb")
        st = os.fstat(fd)
        # A transfer cut off midway leaves the message (and this object) behind: remove its
        # file when it is collected, unless the file was moved on (the inode differs then).
        weakref.finalize(self, _remove_if_same, self.name, st.st_dev, st.st_ino)

    @property
    def failed(self) -> bool:
        return self.over_limit or self.error is not None

    def sha256(self) -> str | None:
        """The data set's digest, or None when the file meta was not as expected."""
        return self._sha.hexdigest() if self._head is None and self._meta_end else None

    def _digest(self, data: bytes) -> None:
        if self._head is None:
            if self._meta_end:
                self._sha.update(data)
            return
        self._head += data
        if self._meta_end is None and len(self._head) >= 144:
            h = self._head
            if h[128:132] == b"DICM" and h[132:138] == b"\x02\x00\x00\x00UL":
                self._meta_end = 144 + int.from_bytes(h[140:144], "little")
            else:
                self._meta_end = 0              # unexpected: the handler reads the file
        if self._meta_end is not None and (self._meta_end == 0 or len(self._head) >= self._meta_end):
            if self._meta_end:
                self._sha.update(self._head[self._meta_end:])
            self._head = None

    def _stop(self) -> None:
        if self._fp is not None:
            try:
                self._fp.truncate(0)
            except (OSError, ValueError):
                pass

    def write(self, data: bytes) -> int:
        self.received += len(data)
        if self.failed or self._fp is None:
            return len(data)
        if self.max_bytes and self.received > self.max_bytes:
            self.over_limit = True              # keep counting, stop filling the disk
            self._stop()
            return len(data)
        try:
            n = self._fp.write(data)
        except OSError as exc:
            self.error = exc
            self._stop()
            return len(data)
        self._digest(data)
        return n

    def flush(self) -> None:
        if self._fp is None or self.failed:
            return
        try:
            self._fp.flush()
        except OSError as exc:
            self.error = exc
            self._stop()

    def close(self) -> None:
        if self._fp is not None:
            try:
                self._fp.close()
            except OSError:
                pass


def _remove_if_same(name: str, dev: int, ino: int) -> None:
    try:
        st = os.stat(name)
        if (st.st_dev, st.st_ino) == (dev, ino):
            os.unlink(name)
    except OSError:
        pass


_RECEIVERS: "weakref.WeakKeyDictionary[AE, tuple[Path, int]]" = weakref.WeakKeyDictionary()
_LIVE: "weakref.WeakValueDictionary[str, _IncomingFile]" = weakref.WeakValueDictionary()
_pynetdicom_tempfile = dimse_messages.NamedTemporaryFile


def _incoming_file(*args: Any, **kwargs: Any) -> Any:
    thread = threading.current_thread()
    target = None
    if isinstance(thread, DULServiceProvider):
        target = _RECEIVERS.get(thread.assoc.ae)
    if target is None:
        return _pynetdicom_tempfile(*args, **kwargs)
    f = _IncomingFile(*target)
    _LIVE[f.name] = f
    return f


def stream_to_spool(ae: AE, spool: Spool, max_instance_bytes: int) -> None:
    """Make ``ae`` receive C-STORE data sets into ``spool``'s incoming folder."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _incoming_file
    _RECEIVERS[ae] = (spool.incoming, max_instance_bytes)


_COMMIT_LOCKS = 64


class _StorageError(Exception):
    """The received data set could not be written to disk (answered 0xA700)."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


class StoreHandler:
    """Event handlers bound to the AE: C-ECHO, C-STORE, association checks and audit."""

    def __init__(self, store: JobStore, spool: Spool, quarantine: Quarantine, audit: A.AuditLog,
                 ae_title: str, allowed_hosts: list[str] | None = None,
                 max_instance_bytes: int = 0):
        self.store = store
        self.spool = spool
        self.quarantine = quarantine
        self.audit = audit
        self.ae_title = ae_title
        self.allowed_hosts = set(allowed_hosts or [])
        self.max_instance_bytes = max_instance_bytes      # 0: no limit
        self.accepting = True
        self.on_stored: Callable[[], None] | None = None  # e.g. wake the triage worker
        # the decide-move-record step, serialised per SOP Instance UID (striped locks)
        self._commit_locks = [threading.Lock() for _ in range(_COMMIT_LOCKS)]

    def handlers(self) -> list[tuple[evt.NotificationEvent | evt.InterventionEvent, Callable[..., Any]]]:
        return [
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_FSM_TRANSITION, self.on_fsm_transition),
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
            self._security_alert(calling, host, "node is stopping")
            assoc.acse.send_reject(0x02, 0x03, 0x01)  # transient, temporary congestion
            assoc.kill()

    # Every way an association request is turned away is audited (Security Alert). Those that
    # pynetdicom decides before any EVT_REQUESTED/EVT_REJECTED — an A-ASSOCIATE-RQ it cannot
    # decode (a calling AE title of 16 spaces raises while decoding the PDU), another PDU type
    # where a request is due, no request within the ACSE timeout — show only as the state
    # machine's transition out of Sta2 (awaiting A-ASSOCIATE-RQ): AA-1 sends an A-ABORT,
    # Evt18 is the ARTIM timer expiring. A connection closed by the peer without a word (a TCP
    # health check, Evt17) is not an association request and is not audited.
    _PRE_NEGOTIATION = {"Evt18": "no A-ASSOCIATE-RQ within the ACSE timeout"}

    def on_fsm_transition(self, event: Any) -> None:
        if event.current_state != "Sta2" or not event.assoc.is_acceptor:
            return
        if event.action == "AA-1":
            reason = ("invalid A-ASSOCIATE-RQ (undecodable PDU or invalid field, e.g. a blank"
                      " calling AE title)" if event.fsm_event == "Evt19"
                      else f"unexpected PDU instead of an A-ASSOCIATE-RQ ({event.fsm_event})")
        elif event.fsm_event in self._PRE_NEGOTIATION:
            reason = self._PRE_NEGOTIATION[event.fsm_event]
        else:
            return
        try:
            host = str(event.assoc.requestor.address)
        except Exception:  # noqa: BLE001 - the alert matters more than the address
            host = ""
        self._security_alert("", host, f"aborted before negotiation: {reason}")

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
        owned: Path | None = None
        try:
            try:
                src, received, over_limit, owned, digest = self._received_file(event)
            except _StorageError as exc:          # disk full while receiving
                return self._out_of_resources(exc.error, ctx)
            except Exception as exc:  # noqa: BLE001 - anything odd from the peer
                return self._reject(None, CANNOT_UNDERSTAND, f"unreadable dataset: {exc}", ctx)
            return self._store_file(src, received, over_limit, digest, sop_uid, sop_class, calling,
                                    ctx)
        finally:
            if owned is not None:                 # our own copy, unless it was moved on
                try:
                    owned.unlink()
                except OSError:
                    pass

    def _received_file(self, event: Any) -> tuple[Path, int, bool, Path | None, str | None]:
        """(file, bytes received, over the size limit, file to remove afterwards, SHA-256 of
        the data set when known already).

        Normally pynetdicom has streamed the data set to a file (and removes it after the
        handler, unless it was moved); an event without one (a test's, or chunked receiving
        switched off) gives its bytes, written here to an incoming file of our own."""
        try:
            path = event.dataset_path
        except AttributeError:
            path = None
        if path is not None:
            path = Path(path)
            live = _LIVE.get(str(path))
            if live is not None:
                live.flush()                    # what pynetdicom wrote is in the file
                if live.error is not None:
                    raise _StorageError(live.error)
                return path, live.received, live.over_limit, None, live.sha256()
            size = path.stat().st_size
            return path, size, bool(self.max_instance_bytes and size > self.max_instance_bytes), None, None
        raw = event.encoded_dataset(include_meta=True)
        try:
            fp, part = self.spool.incoming_file()
        except OSError as exc:
            raise _StorageError(exc) from exc
        try:
            with fp:
                fp.write(raw)
        except BaseException as exc:
            part.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise _StorageError(exc) from exc
            raise
        return (part, len(raw), bool(self.max_instance_bytes and len(raw) > self.max_instance_bytes),
                part, None)

    def _store_file(self, src: Path, received: int, over_limit: bool, digest: str | None,
                    sop_uid: str, sop_class: str, calling: str, ctx: dict[str, Any]) -> int:
        if over_limit:
            return self._refuse_too_large(received, ctx)
        try:
            hdr = dcmread(src, stop_before_pixels=True, defer_size="256 KB",
                          specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                         "SOPClassUID"])
            study_uid = str(hdr.get("StudyInstanceUID", "") or "").strip()
            series_uid = str(hdr.get("SeriesInstanceUID", "") or "").strip()
            ds_sop_uid = str(hdr.get("SOPInstanceUID", "") or "").strip()
            ts = str(hdr.file_meta.get("TransferSyntaxUID", "") or "")
        except Exception as exc:  # noqa: BLE001 - malformed header of any kind
            return self._reject(src, CANNOT_UNDERSTAND, f"cannot parse dataset: {exc}", ctx)
        if not _valid_uid(study_uid) or not _valid_uid(sop_uid):
            return self._reject(src, DATASET_MISMATCH, "missing or invalid Study/SOP Instance UID", ctx)
        if ds_sop_uid and ds_sop_uid != sop_uid:
            return self._reject(src, DATASET_MISMATCH, "SOP Instance UID differs from the request", ctx)
        ctx["study_uid"] = study_uid

        if is_sr_class(sop_class) or self.store.is_own_output(sop_uid, series_uid):
            # Acknowledge (a router must not retry it forever) but never triage: a PACS that
            # sends results back would otherwise loop.
            self.audit.record(A.INSTANCES_TRANSFERRED, A.SUCCESS, A.INSTANCES_TRANSFERRED,
                              action="R", direction="received", detail="ignored: SR or own output", **ctx)
            log.info("instance ignored (SR or own output)", extra=ctx)
            return SUCCESS

        try:
            outcome = self._commit(src, InstanceRecord(
                sop_instance_uid=sop_uid, study_uid=study_uid, series_uid=series_uid or None,
                sop_class_uid=sop_class, transfer_syntax=ts, path="", size=received,
                calling_ae=calling, received_at=time.time()), digest, ctx)
            if outcome != "identical" and self.on_stored is not None:
                self.on_stored()
        except Exception as exc:  # noqa: BLE001 - disk full, read-only, locked database...
            return self._out_of_resources(exc, ctx)
        self.audit.record(A.INSTANCES_TRANSFERRED, A.SUCCESS, action="C", direction="received",
                          status="0x0000", size=received,
                          detail="identical re-send: nothing changed" if outcome == "identical" else None,
                          **ctx)
        log.info("instance stored" if outcome != "identical" else "instance re-sent unchanged",
                 extra=ctx)
        return SUCCESS

    def _commit(self, src: Path, rec: InstanceRecord, digest: str | None, ctx: dict[str, Any]) -> str:
        """Compare with what is stored, move the file into the spool, record it: "new",
        "identical" (nothing done) or "changed". Serialised per SOP Instance UID, so that
        concurrent senders of one instance see each other's result."""
        sop_uid, study_uid = rec.sop_instance_uid, rec.study_uid
        if digest is None:
            digest = dataset_sha256(src)                # outside the lock: reads the file
        lock = self._commit_locks[zlib.crc32(sop_uid.encode()) % _COMMIT_LOCKS]
        with lock:
            old = self.store.stored_instance(sop_uid)
            old_digest = old.sha256 if old is not None else None
            if old is not None and old_digest is None:    # recorded before digests were kept
                try:
                    old_digest = dataset_sha256(Path(old.path))
                    self.store.set_instance_sha256(sop_uid, old.path, old_digest)
                except OSError:
                    old_digest = None                     # its file is gone: nothing to compare
            if old is not None and old.study_uid == study_uid and old_digest == digest:
                return "identical"
            dest = self.spool.path_for(study_uid, sop_uid)
            if dest.exists():                             # never overwrite a received file
                dest = self.spool.version_path_for(study_uid, sop_uid, digest)
            self.spool.adopt(src, dest)
            changed = old is not None and old_digest is not None and old_digest != digest
            self.store.add_instance(replace(rec, path=str(dest), sha256=digest))
        if changed and old is not None:
            info = {**ctx, "previous_study_uid": old.study_uid if old.study_uid != study_uid else None,
                    "old_sha256": old_digest, "new_sha256": digest, "kept_file": Path(old.path).name,
                    "new_file": dest.name}
            log.warning("changed instance: same SOP Instance UID, other content; both kept,"
                        " study re-opened for triage", extra=info)
            self.audit.record(A.INSTANCES_TRANSFERRED, A.SUCCESS, action="U", direction="received",
                              conflict="changed_instance",
                              detail="same SOP Instance UID with different content: both files"
                                     " kept, study re-opened (new generation)", **info)
            return "changed"
        return "new"

    def _out_of_resources(self, exc: BaseException, ctx: dict[str, Any]) -> int:
        log.error("cannot store instance: answering Out of Resources",
                  extra={**ctx, "error": f"{type(exc).__name__}: {exc}"})
        self.audit.record(A.INSTANCES_TRANSFERRED, A.SERIOUS_FAILURE, action="C",
                          direction="received", status=f"0x{OUT_OF_RESOURCES:04X}",
                          detail=f"{type(exc).__name__}", **ctx)
        return OUT_OF_RESOURCES

    def _refuse_too_large(self, received: int, ctx: dict[str, Any]) -> int:
        status = f"0x{OUT_OF_RESOURCES:04X}"
        log.warning("instance refused: larger than max_instance_bytes",
                    extra={**ctx, "status": status, "size": received,
                           "max_instance_bytes": self.max_instance_bytes})
        self.audit.record(A.INSTANCES_TRANSFERRED, A.MINOR_FAILURE, action="C", direction="received",
                          status=status, size=received, max_instance_bytes=self.max_instance_bytes,
                          detail="refused: instance larger than max_instance_bytes", **ctx)
        return OUT_OF_RESOURCES

    def _reject(self, src: Path | None, status: int, reason: str, ctx: dict[str, Any]) -> int:
        qpath = self.quarantine.put_file(src, reason, status=f"0x{status:04X}", **ctx)
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
    stream_to_spool(ae, handler.spool, handler.max_instance_bytes)
    server = ae.start_server((cfg.node.host, cfg.node.port), block=False,
                             ssl_context=tls_context(cfg), evt_handlers=list(handler.handlers()))
    if server is None:  # pragma: no cover - block=False always returns the server
        raise RuntimeError("pynetdicom returned no server")
    return ae, server
