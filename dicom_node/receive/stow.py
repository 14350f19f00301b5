"""STOW-RS: the Store Instances transaction of DICOMweb (PS3.18 10.5), by the C-STORE rules.

``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}`` take a
``multipart/related; type="application/dicom"`` body, one Part 10 instance per part. Each
part streams into an incoming file of the spool (``receive/incoming.IncomingFile``: size
limit, SHA-256 on the way) and is then stored by the one commit path of C-STORE
(:meth:`~cxr_triage.dicom_node.receive.scp.StoreHandler.store_file`: header checked, moved
into the spool with fsync, recorded in the job store, audited) *before* it is listed as
stored. An instance is stored whole or not at all; malformed ones are quarantined.

The response (PS3.18 10.5.3, ``application/dicom+json``): Referenced SOP Sequence
(0008,1199) for the instances stored, Failed SOP Sequence (0008,1198) with a Failure Reason
(0008,1197) for the others: 0xA700 (out of resources: not durably stored, or larger than
``[node] max_instance_bytes``), 0xA900 (UIDs missing or invalid, another study than the
URL's), 0xC000 (cannot understand: not DICOM, another media type, a part cut off midway).
HTTP status: 200 all stored, 202 some stored and some failed, 409 none stored, 400 a body
with no complete part (wrong boundary, truncated), 413 a declared Content-Length over the
request limit, 415 not ``multipart/related`` of ``application/dicom``, 503 the node is stopping
(as C-STORE associations are then refused as transient congestion).

Access (tokens, TLS off loopback) is the worklist's: the web server mounts :func:`stow_router`
behind its login (``web/app.py``), and names the caller in ``request.state.user``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from cxr_triage.dicom_node.receive.incoming import IncomingFile
from cxr_triage.dicom_node.receive.multipart import (
    DICOM,
    MultipartError,
    MultipartReader,
    PartData,
    PartStart,
    UnsupportedMediaType,
    boundary_of,
)
from cxr_triage.dicom_node.receive.scp import StoreHandler
from cxr_triage.dicom_node.receive.statuses import CANNOT_UNDERSTAND, SUCCESS
from cxr_triage.dicom_node.store import audit as A

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
#: the most instances one request may declare room for: the request limit is this many times
#: ``[node] max_instance_bytes`` (413 beyond it, before anything is read)
MAX_INSTANCES_PER_REQUEST = 1000
_FAILED_SOP_SEQUENCE, _REFERENCED_SOP_SEQUENCE = "00081198", "00081199"
_SOP_CLASS, _SOP_INSTANCE, _FAILURE_REASON = "00081150", "00081155", "00081197"


@dataclass(frozen=True)
class Stored:
    """One part's outcome: its C-STORE status (PS3.4 B.2.3) and the UIDs read ("" unknown)."""

    status: int
    sop_class_uid: str = ""
    sop_instance_uid: str = ""


@dataclass
class _Part:
    file: IncomingFile
    content_type: str


def _uid_item(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def stow_response(outcomes: list[Stored]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, DICOM JSON body) of a Store Instances response (PS3.18 10.5.3): 200 all
    stored, 202 some, 409 none (with the Failed SOP Sequence)."""
    stored = [o for o in outcomes if o.status == SUCCESS]
    failed = [o for o in outcomes if o.status != SUCCESS]
    body: dict[str, Any] = {}
    if stored:
        body[_REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": [
            {_SOP_CLASS: _uid_item(o.sop_class_uid), _SOP_INSTANCE: _uid_item(o.sop_instance_uid)}
            for o in stored]}
    if failed:
        body[_FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": [
            {_SOP_CLASS: _uid_item(o.sop_class_uid), _SOP_INSTANCE: _uid_item(o.sop_instance_uid),
             _FAILURE_REASON: {"vr": "US", "Value": [o.status]}} for o in failed]}
    return (200 if not failed else 202 if stored else 409), body


class StowReceiver:
    """The STOW-RS endpoint over the node's :class:`StoreHandler` (its spool, job store,
    quarantine and audit). ``max_request_bytes`` 0: no request limit."""

    def __init__(self, handler: StoreHandler, max_request_bytes: int | None = None):
        self.handler = handler
        if max_request_bytes is None:
            max_request_bytes = handler.max_instance_bytes * MAX_INSTANCES_PER_REQUEST
        self.max_request_bytes = max_request_bytes

    def router(self) -> APIRouter:
        """The two Store Instances resources (PS3.18 10.5.1), for ``app.include_router``."""
        router = APIRouter(prefix="/dicomweb", tags=["DICOMweb"])
        router.add_api_route("/studies", self.store_instances, methods=["POST"],
                             summary="STOW-RS: store instances (PS3.18 10.5)")
        router.add_api_route("/studies/{study}", self.store_study_instances, methods=["POST"],
                             summary="STOW-RS: store instances of one study (PS3.18 10.5)")
        return router

    async def store_instances(self, request: Request) -> JSONResponse:
        return await self.receive(request, None)

    async def store_study_instances(self, request: Request, study: str) -> JSONResponse:
        return await self.receive(request, study)

    async def receive(self, request: Request, study_uid: str | None) -> JSONResponse:
        """Read the body part by part, store each instance, answer the outcome."""
        ctx = self._context(request)
        if not self.handler.accepting:
            return self._refuse(503, "the node is stopping", ctx)
        try:
            boundary = boundary_of(request.headers.get("content-type", ""))
            self._check_length(request)
        except UnsupportedMediaType as exc:
            return self._refuse(415, str(exc), ctx)
        except _TooLarge as exc:
            return self._refuse(413, str(exc), ctx)
        except MultipartError as exc:
            return self._refuse(400, str(exc), ctx)
        outcomes, error = await self._read_parts(request, boundary, study_uid, ctx)
        if error is not None and not outcomes:
            return self._refuse(400, error, ctx)
        status, body = stow_response(outcomes)
        log.info("STOW-RS request answered", extra={**ctx, "status": status, "instances": len(outcomes),
                                                     "failed": sum(o.status != SUCCESS for o in outcomes)})
        return JSONResponse(body, status_code=status, media_type=DICOM_JSON)

    def _check_length(self, request: Request) -> None:
        declared = request.headers.get("content-length", "")
        if self.max_request_bytes and declared.isdigit() and int(declared) > self.max_request_bytes:
            raise _TooLarge(f"request of {declared} bytes is over the limit of {self.max_request_bytes}")

    async def _read_parts(self, request: Request, boundary: bytes, study_uid: str | None,
                          ctx: dict[str, Any]) -> tuple[list[Stored], str | None]:
        """Each complete part stored as it ends; (outcomes, why the body broke off or None).
        A part the body leaves unfinished is quarantined and answered 0xC000."""
        reader = MultipartReader(boundary)
        outcomes: list[Stored] = []
        part: _Part | None = None
        error: str | None = None
        try:
            async for chunk in request.stream():
                for event in reader.feed(chunk):
                    if isinstance(event, PartStart):
                        part = _Part(IncomingFile(self.handler.spool.incoming,
                                                  self.handler.max_instance_bytes), event.content_type)
                    elif isinstance(event, PartData):
                        if part is not None:
                            part.file.write(event.data)
                    elif part is not None:
                        outcomes.append(await run_in_threadpool(self._store_part, part, study_uid, dict(ctx)))
                        part = None
            reader.close()
        except MultipartError as exc:
            error = str(exc)
        except ClientDisconnect:
            error = "client disconnected midway"
        if part is not None:
            outcomes.append(await run_in_threadpool(self._discard_part, part, error or "cut off", dict(ctx)))
        return outcomes, error

    def _store_part(self, part: _Part, study_uid: str | None, ctx: dict[str, Any]) -> Stored:
        """One complete part through the C-STORE commit path (never raises)."""
        f = part.file
        f.flush()
        f.close()
        src = Path(f.name)
        try:
            if part.content_type != DICOM:
                status = self.handler.reject(src, CANNOT_UNDERSTAND,
                                             f"part of media type {part.content_type!r}, not {DICOM}", ctx)
            elif f.error is not None:              # disk full while receiving
                status = self.handler.out_of_resources(f.error, ctx)
            else:
                status = self.handler.store_file(src, f.received, f.over_limit, f.sha256(), None, None,
                                                 str(ctx["calling_ae"]), ctx, study_uid_wanted=study_uid)
        finally:
            src.unlink(missing_ok=True)            # still here unless moved into the spool or quarantine
        return Stored(status, str(ctx.get("sop_class_uid") or ""), str(ctx.get("sop_instance_uid") or ""))

    def _discard_part(self, part: _Part, why: str, ctx: dict[str, Any]) -> Stored:
        """A part the body left unfinished: quarantined, never stored (0xC000)."""
        part.file.flush()
        part.file.close()
        src = Path(part.file.name)
        status = self.handler.reject(src if src.exists() else None, CANNOT_UNDERSTAND,
                                     f"part cut off: {why}", ctx)
        return Stored(status)

    def _context(self, request: Request) -> dict[str, Any]:
        """Who asks, as the audit records it: the named user (or "DICOMweb"), the address."""
        user = getattr(request.state, "user", None)
        return dict(calling_ae=str(user or "DICOMweb"), peer=request.client.host if request.client else "",
                    service="STOW-RS")

    def _refuse(self, http_status: int, reason: str, ctx: dict[str, Any]) -> JSONResponse:
        """A request refused whole (nothing stored): logged, audited, answered with a reason."""
        log.warning("STOW-RS request refused", extra={**ctx, "http_status": http_status, "reason": reason})
        self.handler.audit.record(A.INSTANCES_TRANSFERRED, A.MINOR_FAILURE, action="C",
                                  direction="received", status=f"HTTP {http_status}", detail=reason, **ctx)
        return JSONResponse({"detail": reason}, status_code=http_status)


class _TooLarge(ValueError):
    """The declared request size is over the limit (HTTP 413)."""


__all__ = ["DICOM_JSON", "Stored", "StowReceiver", "stow_response"]
