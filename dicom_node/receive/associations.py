"""Who may associate: host allow-list, shutdown, and a Security Alert for every association
turned away (IHE ATNA; audit event 110113), including those pynetdicom ends before negotiation
and TLS connections refused in their handshake (:meth:`AssociationPolicy.on_tls_refused`).

pynetdicom itself checks the called and calling AE titles (``require_called_aet``,
``require_calling_aet``, set in ``receive/server.py``) and the association limit; its rejects
(PS3.8 9.3.4 A-ASSOCIATE-RJ result/source/diagnostic) arrive here as EVT_REJECTED.
"""

from __future__ import annotations

import logging
from typing import Any

from cxr_triage.dicom_node.store import audit as A

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ diagnostics (PS3.8 9.3.4) pynetdicom sends, by what they mean here
_REJECT_REASONS = {0x03: "calling AE title not recognised", 0x07: "called AE title not recognised",
                   0x02: "too many associations"}
_SOURCE_PROVIDER_PRESENTATION = 0x03      # result source 3: service provider (presentation)


class AssociationPolicy:
    """The association event handlers of the node's AE (EVT_REQUESTED, EVT_REJECTED,
    EVT_FSM_TRANSITION). ``allowed_hosts``: peer IP addresses (empty: any host);
    ``accepting`` False: new associations are rejected as transient congestion (stopping)."""

    def __init__(self, audit: A.AuditLog, ae_title: str, allowed_hosts: list[str] | None = None):
        self.audit = audit
        self.ae_title = ae_title
        self.allowed_hosts = set(allowed_hosts or [])
        self.accepting = True

    @staticmethod
    def _peer(event: Any) -> tuple[str, str]:
        """(calling AE title, peer address) of the event's association."""
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
        """Audit an association request that pynetdicom aborted before negotiation."""
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

    def on_tls_refused(self, host: str, error: BaseException) -> None:
        """A TLS connection refused in its handshake (plain TCP on the TLS port, an untrusted
        or missing client certificate, no shared protocol): a Security Alert, never an
        association (``compat.deferred_handshake_server_context``)."""
        reason = getattr(error, "reason", None) or type(error).__name__
        self._security_alert("", host, f"TLS handshake failed: {reason}")

    def on_rejected(self, event: Any) -> None:
        """Audit pynetdicom's own rejects (AE titles, too many associations)."""
        calling, host = self._peer(event)
        prim = event.assoc.acceptor.primitive
        diag = getattr(prim, "diagnostic", None)
        reason = _REJECT_REASONS.get(diag, f"diagnostic {diag}") if isinstance(diag, int) else f"diagnostic {diag}"
        if getattr(prim, "result_source", None) == _SOURCE_PROVIDER_PRESENTATION:
            reason = "too many associations"
        self._security_alert(calling, host, reason)

    def _security_alert(self, calling: str, host: str, reason: str) -> None:
        log.warning("association rejected", extra={"calling_ae": calling, "peer": host, "reason": reason})
        self.audit.record(A.SECURITY_ALERT, A.MINOR_FAILURE, calling_ae=calling, peer=host,
                          called_ae=self.ae_title, detail=f"association rejected: {reason}")
