"""Every place the node reaches into pynetdicom beyond its public API, behind one version check.

The node relies on six pynetdicom internals; each was written for, and tested on, pynetdicom
3.0.x (:data:`SUPPORTED_PYNETDICOM`), and each function here first calls
:func:`require_supported_pynetdicom`, which raises :class:`UnsupportedPynetdicom` (a
:class:`~cxr_triage.config.ConfigError`: ``cxr-triage serve`` prints its one line and exits 2)
on any other version, rather than run with a patch that may silently no longer apply.

1. **Streamed C-STORE data sets** (:func:`stream_c_store_data_sets`, receiving side). With
   ``_config.STORE_RECV_CHUNKED_DATASET``, pynetdicom 3.0 (``dimse_messages.DIMSEMessage.
   decode_msg``) opens ``NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")`` in the
   system temporary folder for each C-STORE-RQ, writes the preamble, a File Meta Information it
   builds and every data set fragment as it arrives (``write`` then ``file.flush()``), calls the
   EVT_C_STORE handler with ``event.dataset_path``, then closes the file and unlinks it
   (ignoring OSError). The factory installed here runs in the association's DUL thread
   (``DULServiceProvider``, whose ``assoc.ae`` tells the AE), so the node can put the file in
   its own spool (same file system: the handler renames it; see ``receive/incoming.py``); any
   other AE in the process gets pynetdicom's own temporary file.
2. **TLS handshake off the accept loop** (:func:`deferred_handshake_server_context`, receiving
   side).
   pynetdicom's ``ThreadedAssociationServer`` wraps each accepted socket in its accept loop;
   with the default handshake on wrap, one connection that never spoke TLS froze every later
   connection. The context defers the handshake to the association's first read, in its own
   thread, under its timeouts.
3. **DIMSE responses kept for the sender** (:func:`keep_responses_for_the_sender`, sending
   side). pynetdicom 3.0 runs a reactor thread per association beside the thread that calls
   ``send_c_store()``. Before sending, ``send_*()`` pauses the reactor: it clears
   ``_reactor_checkpoint`` and waits for the reactor's ``_is_paused`` flag. The reactor sets
   that flag, passes the checkpoint and only then clears the flag and polls the DIMSE queue, so
   a sender that looks in between sees "paused" while the reactor is about to poll. When the
   peer answers within that window (a fast SCP on loopback, a busy machine that descheduled the
   reactor), the reactor takes the C-STORE-RSP off the queue, logs "Received unexpected C-STORE
   service message" and drops it; the sender waits for the DIMSE timeout and aborts the
   association (pynetdicom issue #435 describes the same race on the acceptor side). Seen once
   in ~10,000 C-STOREs of the 16-association load test under CI load. The guard puts a DIMSE
   *response* that reaches ``_serve_request`` while a ``send_*()`` has the reactor paused back
   on the DIMSE queue, where that call waits for it; requests from the peer and responses with
   nobody waiting still go to pynetdicom's own handling.
4. **No Nagle delay on sent objects** (:func:`send_without_delay`, sending side). pynetdicom
   3.0 leaves Nagle's algorithm on its sockets; a C-STORE of a small object (the 10 KB result
   SR) is a small command PDU and then the data set, and the data set's last segment waited for
   the peer's delayed ACK: ~45 ms per SR on loopback (against dcmtk storescp: SR 93 -> 47 ms,
   SR + summary image over one association 189 -> 116 ms). TCP_NODELAY is set on the
   association's socket (``assoc.dul.socket.socket``) once it is established.
5. **Connection failures as a cause, not ERROR lines** (:func:`connection_failure`, sending
   side). pynetdicom 3.0 (``transport.AssociationSocket.connect``, in the association's DUL
   thread) logs a refused or failed connection as two ERROR lines ("Association request
   failed: unable to connect to remote", "TCP Initialisation Error: <OSError>"), plus a
   traceback for a TLS error, and the association only says "aborted". A filter on the
   ``pynetdicom.transport`` logger keeps the OSError text per DUL thread instead of logging it;
   the sender reads it back for its one WARNING line and ``cxr-triage status``.
6. **Supported contexts shared, not copied per association** (:func:`share_supported_contexts`,
   receiving side). pynetdicom 3.0's ``transport.RequestHandler._create_association`` gives
   each accepted association ``deepcopy(server.contexts)``: for the node's 121 contexts (every
   storage class, 4,592 transfer syntax UIDs) every UID is re-made and re-validated, 81-93 ms
   of CPU measured alone at load average 5 (a single-film study's receive: ~100 ms). Negotiation
   only reads them
   (``presentation.negotiate_as_acceptor`` builds new contexts for the answer), so the server's
   list is one whose deep copy is itself.

The TLS handshake of (2) also reports its failures (plain TCP on the TLS port, an untrusted
certificate): ``deferred_handshake_server_context(on_refused=...)`` is called with the peer
address and the SSL error, once per connection, so the node can audit the refusal; the two
ERROR lines and the traceback pynetdicom's DUL logs for it are filtered out as well.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Any, Callable

import pynetdicom
from pynetdicom import AE, _config, dimse_messages
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from cxr_triage.config import ConfigError

#: the pynetdicom release series these patches were written for (``major.minor``)
SUPPORTED_PYNETDICOM = "3.0"


class UnsupportedPynetdicom(ConfigError):
    """The installed pynetdicom is not a version the node's patches were written for."""


def pynetdicom_version() -> str:
    """The installed pynetdicom's version string (``pynetdicom.__version__``, e.g. ``3.0.4``)."""
    return str(pynetdicom.__version__)


def require_supported_pynetdicom() -> None:
    """Raise :class:`UnsupportedPynetdicom` (one line) unless pynetdicom is 3.0.x."""
    version = pynetdicom_version()
    if version.split(".")[:2] != SUPPORTED_PYNETDICOM.split("."):
        raise UnsupportedPynetdicom(
            f"pynetdicom {version} is installed, but the node's pynetdicom patches"
            f" (dicom_node/compat.py) were written for {SUPPORTED_PYNETDICOM}.x:"
            f" install pynetdicom>={SUPPORTED_PYNETDICOM},<3.1")


# -- 1. streamed C-STORE data sets ----------------------------------------------------------

#: ``factory(ae) -> file object`` for this AE's C-STORE data sets, or None for pynetdicom's own
IncomingFactory = Callable[[AE], Any]

_incoming_factories: list[IncomingFactory] = []
_pynetdicom_tempfile = dimse_messages.NamedTemporaryFile


def _incoming_file(*args: Any, **kwargs: Any) -> Any:
    """What pynetdicom calls for each C-STORE-RQ's data set file (in the DUL thread)."""
    thread = threading.current_thread()
    if isinstance(thread, DULServiceProvider):
        ae = thread.assoc.ae
        for factory in list(_incoming_factories):
            made = factory(ae)
            if made is not None:
                return made
    return _pynetdicom_tempfile(*args, **kwargs)


def receiving_association() -> Association | None:
    """In a DUL thread (where pynetdicom asks for a data set's file): its association."""
    thread = threading.current_thread()
    return thread.assoc if isinstance(thread, DULServiceProvider) else None


def stream_c_store_data_sets(factory: IncomingFactory) -> None:
    """Make pynetdicom stream every received C-STORE data set to a file (``event.dataset_path``),
    made by ``factory(ae)`` where it returns one (an object with pynetdicom's ``NTF`` protocol:
    ``name``, ``write``, ``file.flush()``, ``close``). Idempotent per factory."""
    require_supported_pynetdicom()
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _incoming_file
    if factory not in _incoming_factories:
        _incoming_factories.append(factory)


# -- 2. TLS handshake off the accept loop ---------------------------------------------------

#: ``on_refused(peer_host, error)``: a TLS handshake that failed (the connection is refused)
TlsRefused = Callable[[str, BaseException], None]


class _HandshakeReportingSocket(ssl.SSLSocket):
    """An accepted TLS socket whose (deferred, implicit) handshake failure is reported once to
    its context's ``on_refused`` before pynetdicom sees the error."""

    _cxr_reported = False

    def _report(self, exc: BaseException) -> None:
        if self._cxr_reported:
            return
        self._cxr_reported = True
        with _causes_lock:                  # pynetdicom's ERROR lines for it: not logged
            _tls_refused_threads.add(threading.get_ident())
        on_refused = getattr(self.context, "on_refused", None)
        if on_refused is not None:
            try:
                host = str(self.getpeername()[0])
            except OSError:
                host = "?"
            on_refused(host, exc)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            self._report(exc)
            raise

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        try:
            return super().recv_into(buffer, nbytes, flags)
        except ssl.SSLError as exc:
            self._report(exc)
            raise


class _DeferredHandshakeContext(ssl.SSLContext):
    on_refused: TlsRefused | None = None
    sslsocket_class = _HandshakeReportingSocket

    def wrap_socket(self, sock: socket.socket, server_side: bool = False,
                    do_handshake_on_connect: bool = True, suppress_ragged_eofs: bool = True,
                    server_hostname: str | bytes | None = None,
                    session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        return super().wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False,
                                   suppress_ragged_eofs=suppress_ragged_eofs,
                                   server_hostname=server_hostname, session=session)


def deferred_handshake_server_context(on_refused: TlsRefused | None = None) -> ssl.SSLContext:
    """A server ``SSLContext`` (``PROTOCOL_TLS_SERVER``) whose sockets shake hands on their
    first read, in the association's thread, not when pynetdicom's accept loop wraps them.
    ``on_refused(peer_host, error)`` is called once per connection whose handshake failed."""
    require_supported_pynetdicom()
    quiet_connection_failures()
    ctx = _DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.on_refused = on_refused
    return ctx


# -- 3. DIMSE responses kept for the sender -------------------------------------------------

def keep_responses_for_the_sender(assoc: Association) -> Association:
    """Install the response guard on ``assoc`` (idempotent) and return it."""
    require_supported_pynetdicom()
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


# -- 4. no Nagle delay on sent objects ------------------------------------------------------

def _no_delay(assoc: Association) -> None:
    if assoc.dul.socket is not None and assoc.dul.socket.socket is not None:
        try:
            assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass                                 # only a delay is lost


def send_without_delay(assoc: Association) -> Association:
    """Set TCP_NODELAY on an established association's socket (TLS or not) and return it; an
    association that is not established, or a socket that refuses the option, is left as is."""
    require_supported_pynetdicom()
    if assoc.is_established:
        _no_delay(assoc)
    return assoc


def respond_without_delay(event: Any) -> None:
    """EVT_ACCEPTED handler of the node's AE: TCP_NODELAY on the accepted association's socket,
    so a C-STORE-RSP (a few dozen bytes) leaves at once instead of waiting for the peer's
    delayed ACK (Nagle's algorithm, RFC 896; RFC 1122 4.2.3.2)."""
    require_supported_pynetdicom()
    _no_delay(event.assoc)


# -- 5. connection failures as a cause ------------------------------------------------------

_CONNECT_FAILED = "Association request failed: unable to connect to remote"
_TCP_ERROR = "TCP Initialisation Error: "
_ACSE_TIMEOUT = "ACSE timeout reached while waiting for response to association request"
_causes: dict[int, str] = {}        # DUL thread ident -> the OSError of its failed connection
_tls_refused_threads: set[int] = set()   # DUL threads whose TLS handshake was refused (audited)
_causes_lock = threading.Lock()


class _ConnectionFailureFilter(logging.Filter):
    """Keeps pynetdicom's connection failure (and its TLS traceback) as a cause per thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if record.name == "pynetdicom.dul":     # a refused TLS handshake: "connection closed
            with _causes_lock:                   # before the entire PDU", then its traceback
                if record.exc_info is not None:
                    refused = record.thread in _tls_refused_threads
                    _tls_refused_threads.discard(record.thread or 0)
                    return not refused
                return record.thread not in _tls_refused_threads
        message = record.getMessage()
        cause = (message[len(_TCP_ERROR):] if message.startswith(_TCP_ERROR)
                 else "no answer to the association request (ACSE time-out)"
                 if message == _ACSE_TIMEOUT else None)
        if cause is not None:
            with _causes_lock:
                _causes[record.thread or 0] = cause
            return False
        return not (message == _CONNECT_FAILED
                    or (record.exc_info is not None and isinstance(record.exc_info[1], OSError)))


_FILTER = _ConnectionFailureFilter()


def quiet_connection_failures() -> None:
    """Install the filter on ``pynetdicom.transport``, ``.acse`` and ``.dul`` (idempotent)."""
    require_supported_pynetdicom()
    for name in ("pynetdicom.transport", "pynetdicom.acse", "pynetdicom.dul"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def connection_failure(assoc: Association) -> str | None:
    """Why a requested association was not established: its connection failed ("connection
    refused", "timed out", "[SSL: CERTIFICATE_VERIFY_FAILED] ...") or the peer never answered
    the request (ACSE time-out); None for another cause (rejected, aborted by the peer)."""
    # the connection fails in the DUL thread; the ACSE time-out is logged in the caller's
    with _causes_lock:
        found = [_causes.pop(ident or 0, None) for ident in (assoc.dul.ident, threading.get_ident())]
    cause = next((c for c in found if c is not None), None)
    if cause is None:
        return None
    # "[Errno 111] Connection refused" -> "connection refused"
    text = cause.split("] ", 1)[1] if cause.startswith("[Errno") else cause
    return text[:1].lower() + text[1:]


def close_transports(ae: AE) -> int:
    """Close the transport of every association of ``ae`` (requested or accepted, being set up
    or established); pynetdicom then ends each as aborted (Evt17 -> A-P-ABORT, PS3.8 9.2), also
    one waiting for the peer's A-ASSOCIATE-AC, which neither ``abort()`` nor a shorter ACSE
    time-out ends sooner. pynetdicom 3.0 negotiates a requested association in the caller's
    thread, so its only thread is the DUL's (``DULServiceProvider.assoc``). Returns how many."""
    require_supported_pynetdicom()
    n = 0
    for thread in threading.enumerate():
        if isinstance(thread, DULServiceProvider) and thread.assoc.ae is ae:
            transport = thread.socket
            if transport is not None:
                transport.close()
                n += 1
    return n


# -- 6. supported contexts shared by the accepted associations ------------------------------

class _SharedContexts(list):  # type: ignore[type-arg]
    """The acceptor's supported contexts: read-only during negotiation, so not copied."""

    def __deepcopy__(self, memo: dict[int, Any]) -> "_SharedContexts":
        return self


def share_supported_contexts(server: Any) -> None:
    """Let every association ``server`` (a pynetdicom ``AssociationServer``) accepts share its
    supported presentation contexts instead of deep-copying them (section 6 above)."""
    require_supported_pynetdicom()
    server.contexts = _SharedContexts(server.contexts)
