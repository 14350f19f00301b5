"""Requesting associations (SCU side) that do not lose a DIMSE response to pynetdicom's reactor.

:func:`associate` is ``AE.associate`` plus the response guard of
:func:`cxr_triage.dicom_node.compat.keep_responses_for_the_sender` (pynetdicom 3.0.x's reactor
race, explained there) on the returned association, and TCP_NODELAY on its socket
(:func:`~cxr_triage.dicom_node.compat.send_without_delay`: no Nagle delay before a small
object's last segment). The deliverer, the demo, the e2e evaluation and the tests' senders all
associate through it.
"""

from __future__ import annotations

from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association

from cxr_triage.dicom_node.compat import (
    connection_failure,
    keep_responses_for_the_sender,
    quiet_connection_failures,
    require_supported_pynetdicom,
    send_without_delay,
)


def associate(ae: AE, host: str, port: int, **kwargs: Any) -> Association:
    """``ae.associate(host, port, **kwargs)`` with the response guard and TCP_NODELAY.

    The guard is installed before the caller can send anything; an association that was not
    established is returned as pynetdicom made it (why: :func:`not_established_reason`). Raises
    :class:`~cxr_triage.dicom_node.compat.UnsupportedPynetdicom` on a pynetdicom other than 3.0.x.
    """
    require_supported_pynetdicom()                  # before any connection is made
    quiet_connection_failures()     # a refused connection: its cause, not ERROR lines
    return send_without_delay(keep_responses_for_the_sender(ae.associate(host, port, **kwargs)))


def not_established_reason(assoc: Association) -> str:
    """Why ``assoc`` was not established, for the one WARNING line and ``cxr-triage status``:
    "connection refused", "timed out", "no answer to the association request (ACSE
    time-out)", "association rejected", "association aborted"."""
    cause = connection_failure(assoc)
    if cause is not None:
        return cause
    return "association rejected" if assoc.is_rejected else "association aborted" if assoc.is_aborted \
        else "no connection"
