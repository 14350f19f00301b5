"""Sending result objects by STOW-RS (PS3.18 10.5) to a ``dicomweb:http(s)://…`` destination.

The deliverer's rules hold as for C-STORE (``delivery/dicom_send.py``): each delivery (one
object) is sent in its own Store Instances request and judged on its own, over one HTTP
session per batch (``dicomweb-client``; its own retrying is off: the deliverer backs off).

Judging a response (PS3.18 10.5.3): 200, or 202 with the object only in the Referenced SOP
Sequence (a Warning Reason is kept as detail), is stored. A Failure Reason (0008,1197) of the
object is judged as the C-STORE status it is (PS3.4 B.2.3: 0xA7xx and the transient general
failures retried at the back-off rate, others *permanent*); without one, HTTP 408, 429 and
5xx are transient, other 4xx (400, 401, 403, 409, 413, 415) permanent refusals; no response
at all (refused connection, time-out) is transient.

HTTPS: the destination's certificate is checked against ``[delivery] tls_ca`` (or the system
CAs), ``tls_cert``/``tls_key`` are the client certificate; HTTP Basic authentication comes from
the service account's netrc file (``~/.netrc`` or ``$NETRC``, read by ``requests``): credentials
in the destination URL are refused at start (they would be shown wherever the destination is).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread

from cxr_triage.config import Config, parse_dicomweb_destination, resolve_path
from cxr_triage.dicom_node.delivery.dicom_send import Outcome, elapsed_ms, permanent_refusal, status_text
from cxr_triage.dicom_node.store.jobs import DueDelivery, ResultObject

_TRANSIENT_HTTP = frozenset({408, 429})
_FAILURE_REASON, _WARNING_REASON = 0x00081197, 0x00081196


def stow_session(cfg: Config) -> requests.Session:
    """An HTTP session with the ``[delivery]`` TLS settings (CA bundle, client certificate)."""
    d = cfg.delivery
    session = requests.Session()
    if d.tls_ca:
        session.verify = str(resolve_path(cfg, d.tls_ca))
    if d.tls_cert:
        cert = str(resolve_path(cfg, d.tls_cert))
        session.cert = (cert, str(resolve_path(cfg, d.tls_key))) if d.tls_key else cert
    return session


def send_stow(batch: list[DueDelivery], destination: str, cfg: Config,
              session: requests.Session | None = None) -> dict[int, Outcome]:
    """Each delivery's objects to the DICOMweb service of ``destination`` (``dicomweb:URL``),
    one Store Instances request per object: {delivery id: outcome}."""
    client = DICOMwebClient(url=parse_dicomweb_destination(destination),
                            session=session or stow_session(cfg), timeout=cfg.node.network_timeout_s)
    client.set_http_retry_params(retry=False)
    out: dict[int, Outcome] = {}
    for item in batch:
        results: list[Outcome] = []
        for obj in item.objects:
            results.append(send_object(client, obj))
            if results[-1].error is not None:
                break
        out[item.id] = _merged(results)
    return out


def no_answer_cause(exc: BaseException) -> str:
    """The cause of a request that got no answer, in a few fixed words ("connection refused",
    "timed out", "name not resolved", "TLS handshake failed", "connection reset"; else the
    exception's text), for the one WARNING line and ``cxr-triage status``. The DIMSE side
    (:func:`cxr_triage.dicom_node.compat.connection_failure`) gives the system's own text."""
    text = f"{type(exc).__name__}: {exc}"
    for cause, needles in (("connection refused", ("Connection refused", "ConnectionRefusedError")),
                           ("timed out", ("timed out", "Timeout")),
                           ("name not resolved", ("Name or service not known", "NameResolutionError")),
                           ("TLS handshake failed", ("SSLError", "CERTIFICATE_VERIFY_FAILED")),
                           ("connection reset", ("Connection reset", "RemoteDisconnected"))):
        if any(n in text for n in needles):
            return cause
    return text


def _merged(results: list[Outcome]) -> Outcome:
    """One delivery's outcome from its objects' (the last one's error, if any)."""
    last = results[-1] if results else Outcome()
    return Outcome(last.error, last.permanent, "; ".join(r.detail for r in results if r.detail),
                   tuple(o for r in results for o in r.sent), sum(r.nbytes for r in results),
                   sum(r.send_ms for r in results))


def send_object(client: DICOMwebClient, obj: ResultObject) -> Outcome:
    """STOW-RS one result object; the response judged as the module says."""
    start = time.perf_counter()
    try:
        ds = dcmread(obj.path)
        nbytes = Path(obj.path).stat().st_size
    except Exception as exc:  # noqa: BLE001 - unreadable file
        return Outcome(f"{type(exc).__name__}: {exc}")
    try:
        reply = client.store_instances([ds])
    except requests.HTTPError as exc:
        return refused(exc.response, obj)
    except (requests.RequestException, OSError) as exc:     # no answer: try again later
        return Outcome(f"STOW-RS: {no_answer_cause(exc)}")
    except Exception as exc:  # noqa: BLE001 - a response the client cannot read
        return Outcome(f"STOW-RS: unreadable response: {type(exc).__name__}: {exc}")
    failure = _reason(reply, "FailedSOPSequence", _FAILURE_REASON, obj)
    if failure is not None:
        return Outcome(f"STOW-RS {status_text(failure)}", permanent=permanent_refusal(failure))
    warning = _reason(reply, "ReferencedSOPSequence", _WARNING_REASON, obj)
    return Outcome(None, False, status_text(warning) if warning else "", (obj,), nbytes, elapsed_ms(start))


def refused(response: Any, obj: ResultObject) -> Outcome:
    """A 4xx/5xx answer: the object's Failure Reason if the body gives one, else the HTTP status."""
    code = int(getattr(response, "status_code", 0) or 0)
    failure = None
    try:
        if "json" in response.headers.get("Content-Type", ""):
            failure = _reason(Dataset.from_json(response.json()), "FailedSOPSequence", _FAILURE_REASON, obj)
    except Exception:  # noqa: BLE001 - a body that is not DICOM JSON: judged by the HTTP status
        failure = None
    if failure is not None:
        return Outcome(f"STOW-RS HTTP {code}, {status_text(failure)}", permanent=permanent_refusal(failure))
    transient = code in _TRANSIENT_HTTP or code >= 500
    return Outcome(f"STOW-RS HTTP {code}", permanent=not transient)


def _reason(reply: Dataset, sequence: str, tag: int, obj: ResultObject) -> int | None:
    """The reason (Failure or Warning) given for ``obj`` in ``sequence`` of a response."""
    for item in reply.get(sequence, []) or []:
        uid = str(item.get("ReferencedSOPInstanceUID", "") or "")
        if uid in ("", obj.sop_instance_uid) and tag in item:
            return int(item[tag].value)
    return None
