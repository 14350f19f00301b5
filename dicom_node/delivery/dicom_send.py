"""Sending result objects by C-STORE (PS3.4 Annex B, SCU role) over one association per batch.

:func:`send_c_store` opens **one association** to the destination for everything due to it
in a deliverer run (every delivery of every result in the batch), with presentation contexts
for each SOP class of the batch, the fallback SR classes of a Comprehensive 3D SR, and each
compressed transfer syntax the files are in (plus an uncompressed one). Each delivery (one
object) is then sent and judged on its own: a refusal of one object does not stop the others.

- A Comprehensive 3D SR goes as Comprehensive SR or Enhanced SR (``results/sr_classes.py``)
  when the destination accepted no context for it or answers SOP Class Not Supported (0x0122);
  the fallback is written once beside the original with a derived, stable SOP Instance UID.
- A compressed file goes as it is where its transfer syntax was accepted, else decompressed
  (the same SOP instance; its codecs are lossless).
- Statuses (PS3.4 B.2.3, PS3.7 C): Success or Warning is stored; 0xA7xx and the transient
  general failures are retried at the back-off rate; every other failure is *permanent*.
"""

from __future__ import annotations

import ssl
import time
from collections import defaultdict
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Callable, Iterator

from pydicom import Dataset, dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.status import (
    STATUS_FAILURE,
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    code_to_category,
)

from cxr_triage.config import Config, parse_destination, resolve_path
from cxr_triage.contract.sop_classes import SECONDARY_CAPTURE
from cxr_triage.dicom_node.delivery.scu import associate, not_established_reason
from cxr_triage.dicom_node.results.sr_classes import FALLBACKS, SR_CLASS_NAMES, as_sr_class, fits
from cxr_triage.dicom_node.results.summary_compression import compression_syntax
from cxr_triage.dicom_node.store.jobs import DueDelivery, ResultObject
from cxr_triage.dicom_node.store.spool import safe_name, write_atomic


def stored(status_code: int | None) -> bool:
    """A C-STORE response that means "stored": Success or a Warning (coercion of data
    elements, element discarded, data set does not match SOP class: PS3.4 Annex B.2.3),
    categorised by pynetdicom's storage status table."""
    if status_code is None:
        return False
    return code_to_category(status_code) in (STATUS_SUCCESS, STATUS_WARNING)


@dataclass(frozen=True)
class Outcome:
    """What became of one delivery (one object to one destination)."""

    error: str | None = None                 # None: stored (Success or a Warning)
    permanent: bool = False                  # refused for good: not retried at the back-off rate
    detail: str = ""                         # e.g. "sent as Comprehensive SR", a warning status
    sent: tuple[ResultObject, ...] = ()      # what was sent (a fallback SR differs from the file)
    nbytes: int = 0                          # encoded size of what was sent
    send_ms: float = 0.0                     # C-STORE (or copy) time of this object


# Failure statuses worth retrying at the back-off rate: the destination is short of something
# now (PS3.4 B.2.3 Out of Resources; PS3.7 C processing failure, resource limitation,
# duplicate invocation). Every other failure says "this object will not be stored here".
_TRANSIENT_FAILURES = frozenset({0x0110, 0x0210, 0x0213})


def permanent_refusal(status_code: int) -> bool:
    """A C-STORE failure that retrying will not cure: 0xA9xx (data set does not match SOP
    class), 0xCxxx (cannot understand), SOP class not supported, not authorised, ... (not
    0xA7xx Out of Resources, nor the transient general failures)."""
    if code_to_category(status_code) != STATUS_FAILURE:
        return False
    return not (0xA700 <= status_code <= 0xA7FF or status_code in _TRANSIENT_FAILURES)


def status_text(code: int) -> str:
    """``status 0xA900 (Data Set Does Not Match SOP Class)``, named by pynetdicom's table."""
    name = STORAGE_SERVICE_CLASS_STATUS.get(code, ("", ""))[1]
    return f"status 0x{code:04X}" + (f" ({name})" if name else "")


def tls_client_context(cfg: Config) -> ssl.SSLContext | None:
    """Client TLS for deliveries (``[delivery] tls_*``); the destination's certificate is
    verified against ``tls_ca`` (or the system CAs), its host name is not (DICOM peers are
    usually addressed by IP)."""
    d = cfg.delivery
    if not d.tls_enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                     cafile=str(resolve_path(cfg, d.tls_ca)) if d.tls_ca else None)
    ctx.check_hostname = False
    if d.tls_cert:
        ctx.load_cert_chain(resolve_path(cfg, d.tls_cert),
                            resolve_path(cfg, d.tls_key) if d.tls_key else None)
    return ctx


_UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


Contexts = dict[str, set[str]]      # {SOP class: transfer syntaxes proposed for it}


def expected_contexts(summary_image: bool, compression: str) -> Contexts:
    """The contexts a result's summary image needs (``[delivery] summary_image`` and
    ``summary_image_compression``), or none."""
    if not summary_image:
        return {}
    return {SECONDARY_CAPTURE: {compression_syntax(compression)[0], *_UNCOMPRESSED}}


def _needed_contexts(objects: list[ResultObject]) -> Contexts:
    """Per SOP class of the batch (and the fallback SR classes of a Comprehensive 3D SR): each
    transfer syntax the files are in, and the uncompressed ones."""
    by_class: Contexts = defaultdict(set)
    for obj in objects:
        by_class[obj.sop_class_uid].add(_transfer_syntax(obj.path))
        for fallback in FALLBACKS.get(obj.sop_class_uid, ()):
            by_class[fallback]
    return {sop_class: syntaxes | set(_UNCOMPRESSED) for sop_class, syntaxes in by_class.items()}


def _request_contexts(ae: AE, contexts: Contexts) -> None:
    """One context for each transfer syntax of a class, uncompressed ones included: an
    acceptor given one context with both uncompressed syntaxes may pick Implicit VR (pynetdicom
    does), and the SR file (Explicit VR) was then converted on the way: ~40 ms for the 9 KB
    SR's nested content tree, against ~1 ms to send it in its own syntax."""
    for sop_class in sorted(contexts):
        for ts in sorted(contexts[sop_class] - set(_UNCOMPRESSED)):
            ae.add_requested_context(sop_class, [ts])
        for ts in _UNCOMPRESSED:
            ae.add_requested_context(sop_class, [ts])


class HeldAssociation:
    """A destination's association kept open between batches by its lane
    (``delivery/lanes.py``), so that the objects of a result, committed one after another
    (the SR, then its summary image), go over one association. A new association proposes
    what the held one proposed as well, and the ``expected`` contexts. Not thread-safe: one
    lane's."""

    def __init__(self, expected: Contexts | None = None) -> None:
        self.assoc: Any = None
        self.key: tuple[str, str, bool] = ("", "", False)   # destination, calling AE, TLS
        self.contexts: Contexts = {}
        #: proposed in every new association too: what a result's later objects will need
        #: (the summary image's class and syntax), so a result's first batch proposes them
        self.expected: Contexts = expected or {}

    def usable(self, key: tuple[str, str, bool], needed: Contexts) -> bool:
        """Still established, to the same peer, and proposing every context ``needed``."""
        return (self.assoc is not None and self.assoc.is_established and key == self.key
                and all(ts <= self.contexts.get(c, set()) for c, ts in needed.items()))

    def proposal(self, key: tuple[str, str, bool], needed: Contexts) -> Contexts:
        """``needed`` plus what the held association to the same peer proposed."""
        old = self.contexts if key == self.key else {}
        return {c: needed.get(c, set()) | old.get(c, set()) | self.expected.get(c, set())
                for c in {*needed, *old, *self.expected}}

    def hold(self, assoc: Any, key: tuple[str, str, bool], contexts: Contexts) -> None:
        self.assoc, self.key, self.contexts = assoc, key, contexts

    def release(self, abort: bool = False) -> None:
        """A-RELEASE (or A-ABORT) of the held association, if any."""
        assoc, self.assoc = self.assoc, None
        if assoc is None or not assoc.is_established:
            return
        try:
            assoc.abort() if abort else assoc.release()
        except Exception:  # noqa: BLE001 - the peer is gone already
            pass


def _transfer_syntax(path: str) -> str:
    try:
        return str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    except Exception:  # noqa: BLE001 - the send reports the unreadable file
        return str(ExplicitVRLittleEndian)


def _accepted(assoc: Any) -> dict[str, set[str]]:
    """{SOP class: the transfer syntaxes accepted for it}."""
    out: dict[str, set[str]] = defaultdict(set)
    for cx in assoc.accepted_contexts:
        out[str(cx.abstract_syntax)].update(str(ts) for ts in cx.transfer_syntax)
    return out


def send_c_store(batch: list[DueDelivery], destination: str, calling_ae: str,
                 timeout_s: float = 30.0, tls: ssl.SSLContext | None = None,
                 on_fallback: Callable[[DueDelivery, ResultObject], None] | None = None,
                 track: Callable[[Any], None] | None = None,
                 held: HeldAssociation | None = None) -> dict[int, Outcome]:
    """One association for the whole batch, each delivery (object) sent on its own:
    {delivery id: outcome}. A Comprehensive 3D SR goes as a fallback class when the
    destination accepts no context for it (or answers SOP Class Not Supported);
    ``on_fallback`` is told of each fallback object written; ``track`` is given the AE before
    it associates (so a stop can abort the association: ``delivery/lanes.py``). With ``held``
    the association is reused when it fits and left open afterwards (the lane releases it)."""
    key = (destination, calling_ae, tls is not None)
    needed = _needed_contexts([o for item in batch for o in item.objects])
    if held is not None and held.usable(key, needed):
        assoc = held.assoc
    else:
        contexts = held.proposal(key, needed) if held is not None else needed
        if held is not None:
            held.release()
        assoc = _associate(destination, calling_ae, timeout_s, tls, contexts, track)
        if not assoc.is_established:
            why = not_established_reason(assoc)
            return {item.id: Outcome(why if why.startswith("association") else f"no association: {why}")
                    for item in batch}
        if held is not None:
            held.hold(assoc, key, contexts)
    accepted = _accepted(assoc)
    out: dict[int, Outcome] = {}
    try:
        for item in batch:
            out[item.id] = _send_delivery(assoc, accepted, item, on_fallback)
    finally:
        if held is None and assoc.is_established:
            assoc.release()
    return out


def _associate(destination: str, calling_ae: str, timeout_s: float, tls: ssl.SSLContext | None,
               contexts: Contexts, track: Callable[[Any], None] | None) -> Any:
    ae_title, host, port = parse_destination(destination)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = min(timeout_s, 10.0)
    _request_contexts(ae, contexts)
    if track is not None:
        track(ae)
    return associate(ae, host, port, ae_title=ae_title, tls_args=(tls, host) if tls else None)


def _send_delivery(assoc: Any, accepted: Contexts, item: DueDelivery,
                   on_fallback: Callable[[DueDelivery, ResultObject], None] | None) -> Outcome:
    """Every object of one delivery, until one fails."""
    outcome = Outcome(sent=())
    for obj in item.objects:
        if not assoc.is_established:
            return Outcome("association lost")
        got = _send_object(assoc, accepted, item, obj, on_fallback)
        outcome = Outcome(got.error, got.permanent, "; ".join(filter(None, (outcome.detail, got.detail))),
                          outcome.sent + got.sent, outcome.nbytes + got.nbytes,
                          outcome.send_ms + got.send_ms)
        if got.error is not None:
            break
    return outcome


def _send_object(assoc: Any, accepted: dict[str, set[str]], item: DueDelivery, obj: ResultObject,
                 on_fallback: Callable[[DueDelivery, ResultObject], None] | None) -> Outcome:
    """C-STORE one result object: as it is, or as the first fallback SR class accepted."""
    start = time.perf_counter()
    try:
        ds = dcmread(obj.path)
    except Exception as exc:  # noqa: BLE001 - unreadable file
        return Outcome(f"{type(exc).__name__}: {exc}")
    last: Outcome | None = None
    for sop_class in _offered_classes(ds, obj, accepted):
        to_send, send = (obj, ds) if sop_class == obj.sop_class_uid else _fallback(ds, obj, sop_class)
        try:
            decompressed = _decompress_unless_accepted(send, accepted[sop_class])
            # what goes over the wire: the file's data set, or the decompressed pixels
            nbytes = len(send.PixelData) if decompressed else Path(to_send.path).stat().st_size
            status = assoc.send_c_store(send)
        except Exception as exc:  # noqa: BLE001 - encoding problem, lost connection
            return Outcome(f"{type(exc).__name__}: {exc}")
        code = getattr(status, "Status", None)
        fallback = ("sent as " + SR_CLASS_NAMES[sop_class]) if to_send is not obj else ""
        if decompressed:
            fallback = "; ".join(filter(None, (fallback, "sent decompressed")))
        if code is not None and stored(code):
            if to_send is not obj and on_fallback is not None:
                on_fallback(item, to_send)
            warning = status_text(code) if code != 0 else ""
            return Outcome(None, False, "; ".join(filter(None, (fallback, warning))), (to_send,),
                           nbytes, elapsed_ms(start))
        if code is None:
            return Outcome("no response")
        last = Outcome(f"{status_text(code)}" + (f" ({fallback})" if fallback else ""),
                       permanent=permanent_refusal(code))
        if code != 0x0122:           # SOP Class Not Supported: the next class may be
            break
    if last is None:
        classes = [obj.sop_class_uid] + [c for c in FALLBACKS.get(obj.sop_class_uid, ()) if fits(ds, c)]
        names = " or ".join(SR_CLASS_NAMES.get(c, c) for c in classes)
        return Outcome(f"refused: the destination accepts no {names}", permanent=True)
    return last


def _offered_classes(ds: Dataset, obj: ResultObject, accepted: dict[str, set[str]]) -> Iterator[str]:
    """The SOP classes to send ``obj`` as, in order, among those the destination accepted:
    its own, then each fallback SR class its content fits. Lazily: :func:`fits` walks the
    whole content tree, which makes pydicom encode the data set ~10x slower (8 ms instead of
    0.7 ms for the 10 KB result SR), so it runs only when a fallback is actually tried."""
    if obj.sop_class_uid in accepted:
        yield obj.sop_class_uid
    for sop_class in FALLBACKS.get(obj.sop_class_uid, ()):
        if sop_class in accepted and fits(ds, sop_class):
            yield sop_class


def _fallback(ds: Dataset, obj: ResultObject, sop_class: str) -> tuple[ResultObject, Dataset]:
    """The fallback SR, and its file beside the original (written once: retries resend the
    same SOP Instance UID)."""
    fb = as_sr_class(ds, sop_class)
    path = Path(obj.path).with_name(f"{safe_name(str(fb.SOPInstanceUID))}.dcm")
    if not path.exists():
        buf = BytesIO()
        fb.save_as(buf, enforce_file_format=True)
        write_atomic(path, buf.getvalue())
    return ResultObject(str(fb.SOPInstanceUID), obj.series_uid, sop_class, str(path)), fb


def _decompress_unless_accepted(ds: Dataset, transfer_syntaxes: set[str]) -> bool:
    """Put the data set (in place) in a transfer syntax the destination accepted for its
    class: a compressed file the destination does not take is sent decompressed (the same
    SOP instance; lossless for the summary image's default codecs). True if decompressed."""
    ts = str(ds.file_meta.TransferSyntaxUID)
    if ts in transfer_syntaxes or not UID(ts).is_compressed:
        return False
    ds.decompress(generate_instance_uid=False)   # the same instance, only re-encoded
    return True


def elapsed_ms(start: float) -> float:
    """Milliseconds since ``start`` (a ``time.perf_counter()`` value), to the microsecond."""
    return round((time.perf_counter() - start) * 1000.0, 3)
