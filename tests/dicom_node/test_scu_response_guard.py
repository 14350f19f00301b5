"""The SCU guard against pynetdicom's reactor race (cxr_triage.dicom_node.compat, used by delivery.scu).

The race itself needs a thread switch inside a few bytecodes, so it is replayed here step by
step on a real association with dcmtk ``storescp``: a ``send_*()`` call has paused the reactor,
and the reactor — which passed its checkpoint just before — hands the peer's C-STORE-RSP to
``_serve_request``. With the guard the response is back on the DIMSE queue for the waiting
sender; without it pynetdicom drops it (the sender would wait for the DIMSE timeout and abort).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import SecondaryCaptureImageStorage
from support.node_peers import StoreSCP, free_port

from cxr_triage.dicom_node.compat import keep_responses_for_the_sender
from cxr_triage.dicom_node.delivery.scu import associate


def _response() -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPClassUID = SecondaryCaptureImageStorage
    rsp.AffectedSOPInstanceUID = generate_uid()
    rsp.Status = 0x0000
    return rsp


def _reactor_takes_the_response(assoc) -> object:
    """A send_*() has paused the reactor; the reactor's last poll gets the response."""
    assoc._reactor_checkpoint.clear()
    try:
        assoc._serve_request(_response(), 1)
        _, msg = assoc.dimse.get_msg(block=False)
    finally:
        assoc._reactor_checkpoint.set()
    return msg


@pytest.fixture
def storescp(tmp_path: Path):
    with StoreSCP(tmp_path / "rx", free_port()) as scp:
        yield scp


def _ae() -> AE:
    ae = AE(ae_title="GUARDSCU")
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


def test_a_response_taken_by_the_reactor_goes_back_to_the_waiting_sender(storescp: StoreSCP) -> None:
    assoc = associate(_ae(), "127.0.0.1", storescp.port, ae_title=storescp.aet)
    assert assoc.is_established
    try:
        msg = _reactor_takes_the_response(assoc)
        assert isinstance(msg, C_STORE) and msg.Status == 0x0000 and msg.MessageIDBeingRespondedTo == 1
    finally:
        assoc.release()


def test_without_the_guard_pynetdicom_drops_it(storescp: StoreSCP) -> None:
    """Documents the upstream behaviour the guard exists for; if a pynetdicom release fixes
    the race this fails, and the guard can go."""
    assoc = _ae().associate("127.0.0.1", storescp.port, ae_title=storescp.aet)
    assert assoc.is_established
    try:
        assert _reactor_takes_the_response(assoc) is None
    finally:
        assoc.release()


def test_responses_with_nobody_waiting_and_requests_keep_pynetdicom_handling(storescp: StoreSCP) -> None:
    assoc = associate(_ae(), "127.0.0.1", storescp.port, ae_title=storescp.aet)
    assert keep_responses_for_the_sender(assoc) is assoc  # idempotent
    try:
        assoc._serve_request(_response(), 1)        # reactor not paused: no sender waits
        assert assoc.dimse.get_msg(block=False) == (None, None)
    finally:
        assoc.release()
