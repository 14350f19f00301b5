"""The C-STORE handler: store durably and enqueue, then answer; nothing more.

The handler does one fast thing (pynetdicom's own advice): put the data set as received into
the spool (fsync, atomic rename), record it in the job store, and only then answer Success.
Decoding and inference happen elsewhere (``worker/triage.py``). Any failure to store durably
answers Out of Resources (0xA700), never Success. Malformed input is quarantined and answered
with an error status (``receive/statuses.py``, PS3.4 B.2.3); the node keeps serving.

pynetdicom has already streamed the data set to a file in ``<spool>/.incoming/``
(``receive/incoming.py``; ``event.dataset_path``): the handler reads only its header and
*moves* it into the spool. A data set over ``[node] max_instance_bytes`` is refused (0xA700).

Duplicates: concurrent senders of one instance each have their own incoming file; the step
that decides and records (compare SHA-256, move, insert) is serialised per SOP Instance UID.
An identical re-send changes nothing; other content under a known SOP Instance UID is a
*changed instance* (:meth:`StoreHandler._commit`): kept beside the old file, the study is
re-opened, and the conflict audited.

One study, one patient (``receive/patients.py``): an instance whose Patient ID differs from
that of its study's first stored instance is held for reconciliation (quarantined, never
triaged, audited by patient fingerprint) and acknowledged; the check and the store of one
study are serialised.

Who may associate (allow-lists, shutdown, Security Alerts) is ``receive/associations.py``; the
AE, its contexts and TLS are ``receive/server.py``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from pynetdicom import evt

from cxr_triage.contract.patient import PatientKey
from cxr_triage.contract.sop_classes import is_sr_class
from cxr_triage.dicom_node.compat import respond_without_delay
from cxr_triage.dicom_node.receive.associations import AssociationPolicy
from cxr_triage.dicom_node.receive.incoming import cut_off, live_file, message_received
from cxr_triage.dicom_node.receive.patients import PATIENT_TAGS, StudyPatients, fingerprint, patient_key
from cxr_triage.dicom_node.receive.statuses import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    OUT_OF_RESOURCES,
    SUCCESS,
    hex_status,
    unreadable_reason,
)
from cxr_triage.dicom_node.store import audit as A
from cxr_triage.dicom_node.store.jobs import InstanceRecord, JobStore
from cxr_triage.dicom_node.store.spool import Quarantine, Spool, dataset_sha256
from cxr_triage.inference.deflated import dcmread_bounded

__all__ = ["CANNOT_UNDERSTAND", "DATASET_MISMATCH", "OUT_OF_RESOURCES", "SUCCESS", "StoreHandler"]

log = logging.getLogger(__name__)

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_COMMIT_LOCKS = 64
_HEADER_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", *PATIENT_TAGS]


def _valid_uid(value: Any) -> bool:
    """A DICOM UID (PS3.5 9.1): digits and dots, 1 to 64 characters."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID_RE.match(value))


class _StorageError(Exception):
    """The received data set could not be written to disk (answered 0xA700)."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


class StoreHandler(AssociationPolicy):
    """The node AE's event handlers: C-ECHO, C-STORE, and (inherited) the association checks
    and their audit. ``max_instance_bytes`` 0: no limit; ``on_stored`` is called after each
    new or changed instance (e.g. to wake the triage worker)."""

    def __init__(self, store: JobStore, spool: Spool, quarantine: Quarantine, audit: A.AuditLog,
                 ae_title: str, allowed_hosts: list[str] | None = None,
                 max_instance_bytes: int = 0):
        super().__init__(audit, ae_title, allowed_hosts)
        self.store = store
        self.spool = spool
        self.quarantine = quarantine
        self.max_instance_bytes = max_instance_bytes
        self.on_stored: Callable[[], None] | None = None
        # the decide-move-record step, serialised per SOP Instance UID (striped locks)
        self._commit_locks = [threading.Lock() for _ in range(_COMMIT_LOCKS)]
        self.patients = StudyPatients(store)      # one study, one patient (receive/patients.py)

    def handlers(self) -> list[tuple[evt.NotificationEvent | evt.InterventionEvent, Callable[..., Any]]]:
        """(event, handler) pairs for ``AE.start_server(evt_handlers=...)``."""
        return [
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_FSM_TRANSITION, self.on_fsm_transition),
            (evt.EVT_ACCEPTED, respond_without_delay),
            (evt.EVT_DIMSE_RECV, message_received),
            (evt.EVT_CONN_CLOSE, self.on_conn_close),
        ]

    # -- services ----------------------------------------------------------------------
    def on_echo(self, event: Any) -> int:
        """C-ECHO (Verification, PS3.4 Annex A): always Success."""
        return SUCCESS

    def on_conn_close(self, event: Any) -> None:
        """A connection closed with a C-STORE data set half received (the sender killed, the
        network cut): its partial file is removed at once (``receive/incoming.py``) and the
        cut-off transfer audited (never acknowledged: the sender must send it again)."""
        sizes = cut_off(event.assoc)
        if not sizes:
            return
        calling, host = self._peer(event)
        for size in sizes:
            log.warning("C-STORE transfer cut off: partial data removed",
                        extra={"calling_ae": calling, "peer": host, "size": size})
            self.audit.record(A.INSTANCES_TRANSFERRED, A.MINOR_FAILURE, action="C", direction="received",
                              calling_ae=calling, peer=host, size=size,
                              detail="transfer cut off mid-C-STORE (connection closed): partial data"
                                     " removed, not acknowledged")

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
                return self.out_of_resources(exc.error, ctx)
            except Exception as exc:  # noqa: BLE001 - anything odd from the peer
                return self.reject(None, CANNOT_UNDERSTAND, unreadable_reason("unreadable dataset", exc), ctx)
            return self.store_file(src, received, over_limit, digest, sop_uid, sop_class, calling,
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
            live = live_file(str(path))
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

    def store_file(self, src: Path, received: int, over_limit: bool, digest: str | None,
                   sop_uid: str | None, sop_class: str | None, calling: str, ctx: dict[str, Any],
                   study_uid_wanted: str | None = None) -> int:
        """Store one received instance (a Part 10 file at ``src``, ``received`` bytes): checked,
        moved into the spool (fsync), recorded, audited, *then* its status (PS3.4 B.2.3):
        SUCCESS, OUT_OF_RESOURCES (too large, not durably stored), DATASET_MISMATCH or
        CANNOT_UNDERSTAND (quarantined). The one commit path of C-STORE and STOW-RS
        (``receive/stow.py``): ``sop_uid``/``sop_class`` None take the data set's own (STOW-RS
        has no request UIDs; they are put in ``ctx``), while a C-STORE request's empty Affected
        SOP Instance UID (Type 1, PS3.7 9.3.1.1) is refused as invalid, ``study_uid_wanted`` is the study of a
        STOW-RS URL (another study: DATASET_MISMATCH). Never raises."""
        if over_limit:
            return self._refuse_too_large(received, ctx)
        try:
            # a deflate bomb is refused before pydicom inflates it whole; a deflated file is inflated once
            hdr = dcmread_bounded(src, stop_before_pixels=True, defer_size="256 KB", specific_tags=_HEADER_TAGS)
            study_uid = str(hdr.get("StudyInstanceUID", "") or "").strip()
            series_uid = str(hdr.get("SeriesInstanceUID", "") or "").strip()
            ds_sop_uid = str(hdr.get("SOPInstanceUID", "") or "").strip()
            ts = str(hdr.file_meta.get("TransferSyntaxUID", "") or "")
            patient = patient_key(hdr)
            sop_uid = ds_sop_uid if sop_uid is None else sop_uid
            sop_class = str(hdr.get("SOPClassUID", "") or "").strip() if sop_class is None else sop_class
        except Exception as exc:  # noqa: BLE001 - malformed header of any kind
            return self.reject(src, CANNOT_UNDERSTAND, unreadable_reason("cannot parse dataset", exc), ctx)
        ctx.update(sop_instance_uid=sop_uid, sop_class_uid=sop_class)
        if not _valid_uid(study_uid) or not _valid_uid(sop_uid):
            return self.reject(src, DATASET_MISMATCH, "missing or invalid Study/SOP Instance UID", ctx)
        if ds_sop_uid and ds_sop_uid != sop_uid:
            return self.reject(src, DATASET_MISMATCH, "SOP Instance UID differs from the request", ctx)
        if study_uid_wanted and study_uid != study_uid_wanted:
            return self.reject(src, DATASET_MISMATCH, "Study Instance UID differs from the request URL", ctx)
        ctx["study_uid"] = study_uid

        try:
            ignored = is_sr_class(sop_class) or self.store.is_own_output(sop_uid, series_uid)
        except Exception as exc:  # noqa: BLE001 - the job store unreachable (database down)
            return self.out_of_resources(exc, ctx)
        if ignored:
            # Acknowledge (a router must not retry it forever) but never triage: a PACS that
            # sends results back would otherwise loop.
            self.audit.record(A.INSTANCES_TRANSFERRED, A.SUCCESS, A.INSTANCES_TRANSFERRED,
                              action="R", direction="received", detail="ignored: SR or own output", **ctx)
            log.info("instance ignored (SR or own output)", extra=ctx)
            return SUCCESS

        try:
            with self.patients.lock(study_uid):       # check and store: one study at a time
                owner = self.patients.conflict(study_uid, patient)
                if owner is not None:
                    return self._hold(src, patient, owner, ctx)
                outcome = self._commit(src, InstanceRecord(
                    sop_instance_uid=sop_uid, study_uid=study_uid, series_uid=series_uid or None,
                    sop_class_uid=sop_class, transfer_syntax=ts, path="", size=received,
                    calling_ae=calling, received_at=time.time()), digest, ctx)
                self.patients.remember(study_uid, patient)
            if outcome != "identical" and self.on_stored is not None:
                self.on_stored()
        except Exception as exc:  # noqa: BLE001 - disk full, read-only, locked database...
            return self.out_of_resources(exc, ctx)
        self.audit.record(A.INSTANCES_TRANSFERRED, A.SUCCESS, action="C", direction="received",
                          status=hex_status(SUCCESS), size=received,
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

    def _hold(self, src: Path, patient: PatientKey, owner: PatientKey, ctx: dict[str, Any]) -> int:
        """Another patient's instance under a known Study Instance UID: held for
        reconciliation (quarantined, never triaged), audited by patient fingerprint, and
        acknowledged (Success: it is durably kept; 0xA700 if it could not be)."""
        info = {**ctx, "conflict": "patient_conflict", "patient_fingerprint": fingerprint(patient),
                "study_patient_fingerprint": fingerprint(owner)}
        reason = ("held for reconciliation: another patient's instance under this Study Instance"
                  " UID (not triaged)")
        qpath = self.quarantine.put_file(src, reason, status=hex_status(SUCCESS), **info)
        if not qpath.exists():
            return self.out_of_resources(OSError("held instance not kept"), ctx)
        log.warning("instance held: its patient differs from the study's", extra={**info, "quarantine": qpath.name})
        self.audit.record(A.INSTANCES_TRANSFERRED, A.MINOR_FAILURE, action="C", direction="received",
                          status=hex_status(SUCCESS), detail=reason, quarantine=qpath.name, **info)
        return SUCCESS

    def out_of_resources(self, exc: BaseException, ctx: dict[str, Any]) -> int:
        """Log and audit an instance not durably stored (disk full, store down): 0xA700."""
        log.error("cannot store instance: answering Out of Resources",
                  extra={**ctx, "error": f"{type(exc).__name__}: {exc}"})
        self.audit.record(A.INSTANCES_TRANSFERRED, A.SERIOUS_FAILURE, action="C",
                          direction="received", status=hex_status(OUT_OF_RESOURCES),
                          detail=f"{type(exc).__name__}", **ctx)
        return OUT_OF_RESOURCES

    def _refuse_too_large(self, received: int, ctx: dict[str, Any]) -> int:
        status = hex_status(OUT_OF_RESOURCES)
        log.warning("instance refused: larger than max_instance_bytes",
                    extra={**ctx, "status": status, "size": received,
                           "max_instance_bytes": self.max_instance_bytes})
        self.audit.record(A.INSTANCES_TRANSFERRED, A.MINOR_FAILURE, action="C", direction="received",
                          status=status, size=received, max_instance_bytes=self.max_instance_bytes,
                          detail="refused: instance larger than max_instance_bytes", **ctx)
        return OUT_OF_RESOURCES

    def reject(self, src: Path | None, status: int, reason: str, ctx: dict[str, Any]) -> int:
        """Quarantine ``src`` (None: nothing readable arrived) with why, log and audit it;
        returns ``status`` (PS3.4 B.2.3: 0xA900 or 0xC000)."""
        qpath = self.quarantine.put_file(src, reason, status=hex_status(status), **ctx)
        log.warning("instance refused and quarantined",
                    extra={**ctx, "status": hex_status(status), "reason": reason, "quarantine": qpath.name})
        self.audit.record(A.INSTANCES_TRANSFERRED, A.MINOR_FAILURE, action="C", direction="received",
                          status=hex_status(status), detail=reason, quarantine=qpath.name, **ctx)
        return status
