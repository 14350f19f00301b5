"""Requesting associations (SCU side) that do not lose a DIMSE response to pynetdicom's reactor.

pynetdicom (3.0.x) runs a reactor thread per association beside the thread that calls
``send_c_store()``. Before sending, ``send_*()`` pauses the reactor: it clears a checkpoint
and waits for the reactor's ``_is_paused`` flag. The reactor sets that flag, passes the
checkpoint and only then clears the flag and polls the DIMSE queue — so a sender that looks
in between sees "paused" while the reactor is about to poll. When the peer answers within
that window (a fast SCP on loopback, a busy machine that descheduled the reactor), the
reactor takes the C-STORE-RSP off the queue, logs "Received unexpected C-STORE service
message" and drops it; the sender waits for the DIMSE timeout and aborts the association
(pynetdicom issue #435 describes the same race on the acceptor side). Seen here once in
~10,000 C-STOREs of the 16-association load test under CI load.

:func:`associate` is ``AE.associate`` plus one guard on the returned association: a DIMSE
*response* that reaches the reactor while a ``send_*()`` call has the reactor paused is put
back on the DIMSE queue, where that call is waiting for it. Requests from the peer and
responses with nobody waiting still go to pynetdicom's own handling.
"""

from __future__ import annotations

from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association


def keep_responses_for_the_sender(assoc: Association) -> Association:
    """Install the guard on ``assoc`` (idempotent) and return it."""
    if getattr(assoc, "_cxr_response_guard", False):
        return assoc
    serve = assoc._serve_request

    def serve_or_requeue(msg: Any, context_id: int) -> None:
        waiting = not assoc._reactor_checkpoint.is_set()   # a send_*() paused the reactor
        if waiting and msg is not None and not msg.is_valid_request and msg.is_valid_response:
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = serve_or_requeue  # type: ignore[method-assign]
    assoc._cxr_response_guard = True  # type: ignore[attr-defined]
    return assoc


def associate(ae: AE, host: str, port: int, **kwargs: Any) -> Association:
    """``ae.associate(host, port, **kwargs)`` with :func:`keep_responses_for_the_sender`.

    The guard is installed before the caller can send anything; an association that was not
    established is returned as pynetdicom made it.
    """
    return keep_responses_for_the_sender(ae.associate(host, port, **kwargs))
