"""The listening application entity: presentation contexts, limits, timeouts, TLS, start.

Verification; the classes the triage reads (``cxr_triage.contract.sop_classes``) in the
transfer syntaxes the inference reader decodes; every other storage class in any transfer
syntax (accepted and recorded as not assessable: a router sends whole studies; SR is
acknowledged and skipped, loop prevention). Called AE title required, calling AE titles from
``[node] allowed_calling_aets`` (pynetdicom rejects the others; ``receive/associations.py``
audits it). Conformance: docs/conformance.md.
"""

from __future__ import annotations

import ssl

from pydicom import uid as dcm_uid
from pynetdicom import AE
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import
from pynetdicom.transport import ThreadedAssociationServer

from cxr_triage.config import Config, resolve_path
from cxr_triage.contract.sop_classes import TRIAGE_SOP_CLASSES
from cxr_triage.dicom_node.compat import deferred_handshake_server_context
from cxr_triage.dicom_node.receive.incoming import stream_to_spool
from cxr_triage.dicom_node.receive.scp import StoreHandler

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

ACSE_TIMEOUT_S = 5.0  # longest wait for the A-ASSOCIATE-RQ after a connection opens


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


def tls_context(cfg: Config) -> ssl.SSLContext | None:
    """Server TLS from config (TLS 1.2+); with ``tls_ca`` set, client certificates are
    required and only that CA is trusted for them (never the operating system's store).
    The handshake happens in the association's thread (``compat.deferred_handshake_server_context``)."""
    node = cfg.node
    if not node.tls_enabled:
        return None
    ctx = deferred_handshake_server_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(resolve_path(cfg, node.tls_cert), resolve_path(cfg, node.tls_key))
    if node.tls_ca:
        ctx.load_verify_locations(cafile=str(resolve_path(cfg, node.tls_ca)))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def start_scp(cfg: Config, handler: StoreHandler) -> tuple[AE, ThreadedAssociationServer]:
    """Start listening on ``[node] host:port`` (non-blocking); returns the AE and its server.
    C-STORE data sets stream into ``handler.spool``'s incoming folder (``receive/incoming.py``)."""
    ae = build_ae(cfg)
    stream_to_spool(ae, handler.spool, handler.max_instance_bytes)
    server = ae.start_server((cfg.node.host, cfg.node.port), block=False,
                             ssl_context=tls_context(cfg), evt_handlers=list(handler.handlers()))
    if server is None:  # pragma: no cover - block=False always returns the server
        raise RuntimeError("pynetdicom returned no server")
    return ae, server
