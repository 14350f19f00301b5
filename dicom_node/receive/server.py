"""The listening application entity: presentation contexts, limits, timeouts, TLS, start.

Verification; the classes the triage reads (``cxr_triage.contract.sop_classes``) in the
transfer syntaxes the inference reader decodes; every other storage class in any transfer
syntax (accepted and recorded as not assessable: a router sends whole studies; SR is
acknowledged and skipped, loop prevention). Called AE title required, calling AE titles from
``[node] allowed_calling_aets`` (pynetdicom rejects the others; ``receive/associations.py``
audits it). Bound to loopback unless the allow-lists or ``[node] host`` say otherwise
(:func:`listen_host`). Conformance: docs/conformance.md.
"""

from __future__ import annotations

import logging
import ssl

from pydicom import uid as dcm_uid
from pynetdicom import AE
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import
from pynetdicom.transport import ThreadedAssociationServer

from cxr_triage.config import Config, resolve_path
from cxr_triage.contract.sop_classes import TRIAGE_SOP_CLASSES
from cxr_triage.dicom_node.compat import (
    TlsRefused,
    deferred_handshake_server_context,
    share_supported_contexts,
)
from cxr_triage.dicom_node.receive.incoming import stream_to_spool
from cxr_triage.dicom_node.receive.scp import StoreHandler

log = logging.getLogger(__name__)

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
LOOPBACK = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"


def listen_host(cfg: Config) -> tuple[str, str]:
    """(address to bind, why): ``[node] host`` when set; when it is empty (the embedded
    default), loopback unless ``allowed_calling_aets`` or ``allowed_hosts`` restrict who may
    store, then every interface. Without either list any host on the network could store PHI
    into the node, so that takes an explicit ``host``."""
    node = cfg.node
    if node.host.strip():
        return node.host.strip(), "[node] host"
    if node.allowed_calling_aets or node.allowed_hosts:
        return ALL_INTERFACES, "allow-lists set ([node] allowed_calling_aets/allowed_hosts)"
    return LOOPBACK, ("loopback only: no [node] allowed_calling_aets or allowed_hosts; set them,"
                      " or [node] host, to accept other hosts")


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


def tls_context(cfg: Config, on_refused: TlsRefused | None = None) -> ssl.SSLContext | None:
    """Server TLS from config (TLS 1.2+); with ``tls_ca`` set, client certificates are
    required and only that CA is trusted for them (never the operating system's store).
    The handshake happens in the association's thread (``compat.deferred_handshake_server_context``);
    ``on_refused(peer_host, error)`` is told of each connection whose handshake failed."""
    node = cfg.node
    if not node.tls_enabled:
        return None
    ctx = deferred_handshake_server_context(on_refused)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(resolve_path(cfg, node.tls_cert), resolve_path(cfg, node.tls_key))
    if node.tls_ca:
        ctx.load_verify_locations(cafile=str(resolve_path(cfg, node.tls_ca)))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def start_scp(cfg: Config, handler: StoreHandler) -> tuple[AE, ThreadedAssociationServer]:
    """Start listening on :func:`listen_host` ``:[node] port`` (non-blocking); returns the AE
    and its server. C-STORE data sets stream into ``handler.spool``'s incoming folder
    (``receive/incoming.py``); a refused TLS handshake is audited (``handler.on_tls_refused``)."""
    ae = build_ae(cfg)
    stream_to_spool(ae, handler.spool, handler.max_instance_bytes)
    host, why = listen_host(cfg)
    log.log(logging.WARNING if host == LOOPBACK and not cfg.node.host.strip() else logging.INFO,
            "DICOM port bound", extra={"host": host, "port": cfg.node.port, "why": why})
    server = ae.start_server((host, cfg.node.port), block=False,
                             ssl_context=tls_context(cfg, handler.on_tls_refused),
                             evt_handlers=list(handler.handlers()))
    if server is None:  # pragma: no cover - block=False always returns the server
        raise RuntimeError("pynetdicom returned no server")
    share_supported_contexts(server)       # not deep-copied per association (~50 ms each)
    return ae, server
