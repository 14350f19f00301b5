"""The study's result to a RIS: one HL7 v2.5 ORU^R01 per result over MLLP (optional).

Built with hl7apy (message structure and field escaping from the library, validated against
its v2.5 ORU_R01 definition before sending), from the result SR as it was stored (what the
RIS reads is what the PACS got). One message per result and RIS destination
(``[delivery] hl7_destinations``, ``APP@host:port``; APP is the receiving application),
delivered and retried like a DICOM object: the same job-store delivery row, back-off, dead
letter. A correction (an amended result, see ``results/sr.py`` ``Amendment``) is sent with
result status ``C`` in OBR-25 and every OBX-11; a first result is ``P`` (preliminary: an AI
call is not a report).

    MSH  sending application = the node's AE title, [delivery] hl7_sending_facility;
         receiving application = APP; control ID stable per delivery (a retry is the same
         message); v2.5; UTF-8
    PID  PID-3 Patient ID (^^^Issuer of Patient ID), PID-5 name, PID-7 birth date, PID-8 sex
    ORC  RE, placer and filler order number = the accession number
    OBR  OBR-2/-3 = accession number, OBR-4 the procedure, OBR-7 study date/time,
         OBR-22 result time, OBR-25 P or C
    NTE  "AI triage - research output, not for diagnosis"
    TQ1  TQ1-9 priority (HL7 table 0027): A (ASAP) for suspicious, R (routine) otherwise
    OBX  decision (CWE, OBX-8 abnormal flag A / N), AI triage rank (NM: 1 suspicious,
         2 not assessable, 3 likely normal: a RIS sorts on it), [escalation reason (CWE,
         "prior suspicious result", flag A) and the prior result's SR (ST)], not-assessable reasons (CWE),
         abnormality score and threshold (NM, unit 1), operating point (ST), nodule/mass flag,
         score and threshold (models with that output; the score alone from a model that
         gives no flag) and its operating point in words, or why no flag is given (ST
         CXRT023), model name and version (ST),
         Study Instance UID (ST, DCM 110180), result SR SOP Instance UID (ST)

Codes are the SR's (``sr_codes``: 99CXRT, SCT, DCM). The ACK decides: AA/CA delivered;
AE/CE (the message itself is in error) refused for good; AR/CR (rejected for reasons
unrelated to content, e.g. the RIS is busy), no ACK or no connection: retried with back-off.
Nothing from the message or the ACK's text is logged or stored (PHI): only the ACK code.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

from pydicom import Dataset

from cxr_triage.contract.result import Decision
from cxr_triage.dicom_node.results import sr_codes as C
from cxr_triage.dicom_node.results.sr_reader import ParsedResult, read_result_sr

HL7_VERSION = "2.5"
START, END = b"\x0b", b"\x1c\x0d"          # MLLP block framing (HL7 v2 Appendix C)
NOTE = "AI triage - research output, not for diagnosis"
#: the order a RIS should read in (1 first): the worklist's own order of decisions
RANK = {Decision.SUSPICIOUS: 1, Decision.NOT_ASSESSABLE: 2, Decision.LIKELY_NORMAL: 3}
#: TQ1-9 priority (HL7 table 0027)
PRIORITY = {Decision.SUSPICIOUS: ("A", "ASAP"), Decision.NOT_ASSESSABLE: ("R", "Routine"),
            Decision.LIKELY_NORMAL: ("R", "Routine")}
#: OBX-8 abnormal flags (HL7 table 0078); none for not assessable
ABNORMAL_FLAG = {Decision.SUSPICIOUS: "A", Decision.LIKELY_NORMAL: "N"}
_STUDY_UID = ("110180", "Study Instance UID", "DCM")
_ALGORITHM_NAME = ("111001", "Algorithm Name", "DCM")
_ALGORITHM_VERSION = ("111003", "Algorithm Version", "DCM")
_PROCEDURE = ("CXRT001", "AI triage decision", C.SCHEME)    # OBR-4 when the SR names none


@dataclass(frozen=True)
class Hl7Outcome:
    """An MLLP exchange: ``error`` None when acknowledged (AA/CA); ``permanent`` for AE/CE."""

    error: str | None
    permanent: bool = False
    ack_code: str | None = None


def build_oru(sr: Dataset, *, control_id: str, sending_application: str,
              receiving_application: str, sending_facility: str = "",
              now: float | None = None) -> str:
    """The ORU^R01 for one result SR (ER7 text, segments separated by CR). ValueError when
    ``sr`` is not a cxr-triage result SR or the message does not validate."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.core import Message

    result = read_result_sr(sr)
    status = "C" if "PredecessorDocumentsSequence" in sr else "P"
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(time.time() if now is None else now))
    accession = str(sr.get("AccessionNumber", "") or "")

    m = Message("ORU_R01", version=HL7_VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    m.msh.msh_3 = _st(sending_application)
    if sending_facility:
        m.msh.msh_4 = _st(sending_facility)
    m.msh.msh_5 = _st(receiving_application)
    m.msh.msh_7 = stamp
    m.msh.msh_9 = "ORU^R01^ORU_R01"
    m.msh.msh_10 = _st(control_id)
    m.msh.msh_11 = "P"
    m.msh.msh_18 = "UNICODE UTF-8"

    patient_result = m.add_group("ORU_R01_PATIENT_RESULT")
    pid = patient_result.add_group("ORU_R01_PATIENT").pid
    pid.pid_1 = "1"
    pid.pid_3.cx_1 = _st(str(sr.get("PatientID", "") or ""))
    issuer = str(sr.get("IssuerOfPatientID", "") or "")
    if issuer:
        pid.pid_3.cx_4 = _st(issuer)
    _person_name(pid.pid_5, sr.get("PatientName"))
    if sr.get("PatientBirthDate"):
        pid.pid_7 = str(sr.PatientBirthDate)
    if str(sr.get("PatientSex", "") or "") in ("M", "F", "O"):
        pid.pid_8 = str(sr.PatientSex)

    order = patient_result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.orc.orc_1 = "RE"
    if accession:
        order.orc.orc_2.ei_1 = _st(accession)
        order.orc.orc_3.ei_1 = _st(accession)
    obr = order.obr
    obr.obr_1 = "1"
    if accession:
        obr.obr_2.ei_1 = _st(accession)
        obr.obr_3.ei_1 = _st(accession)
    _coded(obr.obr_4, *_procedure(sr))
    when = f"{sr.get('StudyDate', '') or ''}{str(sr.get('StudyTime', '') or '').split('.')[0]}"
    if when:
        obr.obr_7 = when
    obr.obr_22 = stamp
    obr.obr_25 = status
    order.add_segment("NTE").nte_3 = _st(NOTE)
    priority, meaning = PRIORITY[result.decision]
    timing = order.add_group("ORU_R01_TIMING_QTY")
    timing.tq1.tq1_1 = "1"
    _coded(timing.tq1.tq1_9, priority, meaning, "HL70027")

    for n, (value_type, concept, value, extra) in enumerate(_observations(result, sr), start=1):
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(n)
        obx.obx_2 = value_type
        _coded(obx.obx_3, *concept)
        if value_type == "CWE":
            _coded(obx.obx_5, *value)
        else:
            obx.obx_5 = _st(str(value))
        if value_type == "NM":
            _coded(obx.obx_6, C.NO_UNITS.value, C.NO_UNITS.meaning, C.NO_UNITS.scheme_designator)
        if extra:
            obx.obx_8 = extra
        obx.obx_11 = status
    if not m.validate():
        raise ValueError("the ORU^R01 does not validate against HL7 v2.5")
    return str(m.to_er7())


def _observations(result: ParsedResult, sr: Dataset) -> list[tuple[str, tuple[str, str, str], Any, str]]:
    """(value type, observation identifier, value, abnormal flag) per OBX, in order."""
    def code(c: Any) -> tuple[str, str, str]:
        return str(c.value), str(c.meaning), str(c.scheme_designator)

    out: list[tuple[str, tuple[str, str, str], Any, str]] = [
        ("CWE", code(C.TRIAGE_DECISION), code(C.DECISION_CODES[result.decision]),
         ABNORMAL_FLAG.get(result.decision, "")),
        ("NM", code(C.TRIAGE_RANK), RANK[result.decision], ""),
    ]
    if result.escalation is not None:     # raised to suspicious by a prior result
        out.append(("CWE", code(C.ESCALATION_REASON), code(C.ESCALATION_CODES[result.escalation.reason]), "A"))
        if result.escalation.prior_sr_uid:
            out.append(("ST", code(C.PRIOR_RESULT_SR), result.escalation.prior_sr_uid, ""))
    if result.decision is Decision.NOT_ASSESSABLE:
        reasons = []
        for film in result.films:
            if film.reason is not None and film.reason not in reasons:
                reasons.append(film.reason)
        out += [("CWE", code(C.NOT_ASSESSABLE_REASON), code(C.REASON_CODES[r]), "") for r in reasons]
    if result.score is not None:
        out.append(("NM", code(C.ABNORMALITY_SCORE), _number(result.score), ""))
    if result.threshold is not None:
        out.append(("NM", code(C.OPERATING_POINT_THRESHOLD), _number(result.threshold), ""))
    if result.operating_point:
        out.append(("ST", code(C.OPERATING_POINT), result.operating_point, ""))
    if result.nodule_flag is not None:
        out.append(("CWE", code(C.NODULE_MASS_FLAG), code(C.PRESENT if result.nodule_flag else C.ABSENT),
                    "A" if result.nodule_flag else ""))
    if result.nodule_score is not None:
        out.append(("NM", code(C.NODULE_MASS_SCORE), _number(result.nodule_score), ""))
    if result.nodule_threshold is not None:
        out.append(("NM", code(C.NODULE_MASS_THRESHOLD), _number(result.nodule_threshold), ""))
    if result.nodule_point:
        out.append(("ST", code(C.NODULE_MASS_POINT), result.nodule_point, ""))
    if result.model_name:
        out.append(("ST", _ALGORITHM_NAME, result.model_name, ""))
    if result.model_version:
        out.append(("ST", _ALGORITHM_VERSION, result.model_version, ""))
    out.append(("ST", _STUDY_UID, result.study_instance_uid, ""))
    out.append(("ST", code(C.RESULT_SR), str(sr.SOPInstanceUID), ""))
    return out


def _number(value: float) -> str:
    """An NM value: the display rounding of the SR (4 decimals, trailing zeros dropped)."""
    text = f"{float(value):.4f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-", "-0") else "0"


def _procedure(sr: Dataset) -> tuple[str, str, str]:
    """OBR-4: the procedure the SR reports (its films' procedure code), else the AI call."""
    for item in sr.get("ProcedureCodeSequence", []) or sr.get("PerformedProcedureCodeSequence", []):
        if item.get("CodeValue") and item.get("CodingSchemeDesignator"):
            return str(item.CodeValue), str(item.get("CodeMeaning", "")), str(item.CodingSchemeDesignator)
    return _PROCEDURE


def _st(text: str) -> str:
    """A string value escaped by hl7apy's ST datatype (| ^ & ~ \\ in names and ids become
    \\F\\ \\S\\ ...: they never break the message)."""
    from hl7apy import v2_5

    return str(v2_5.ST(text).to_er7())


def _coded(field: Any, value: str, meaning: str, scheme: str) -> None:
    """A CE/CWE: identifier ^ text ^ coding system, each part escaped."""
    field.value = "^".join(_st(part) for part in (value, meaning, scheme))


def _person_name(field: Any, name: Any) -> None:
    """DICOM PN family^given^middle^prefix^suffix -> HL7 XPN family^given^middle^suffix^prefix."""
    if not name:
        return
    parts = (str(name).split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = parts
    for component, value in (("xpn_1", family), ("xpn_2", given), ("xpn_3", middle),
                             ("xpn_4", suffix), ("xpn_5", prefix)):
        if value:
            if component == "xpn_1":
                field.xpn_1.fn_1 = _st(value)
            else:
                setattr(field, component, _st(value))


def _os_error_text(exc: OSError) -> str:
    """"ConnectionRefusedError (connection refused)", "TimeoutError (timed out)"."""
    cause = (exc.strerror or str(exc) or "").strip()
    return f"{type(exc).__name__} ({cause[:1].lower() + cause[1:]})" if cause else type(exc).__name__


def send_mllp(message: str, host: str, port: int, timeout_s: float = 30.0,
              track: Callable[[socket.socket], None] | None = None) -> Hl7Outcome:
    """One message over MLLP (a TCP connection per message), then its ACK read and judged.
    ``track`` is given the connected socket (so a stop can close it)."""
    from hl7apy.parser import parse_message

    try:
        with socket.create_connection((host, port), timeout=min(timeout_s, 10.0)) as sock:
            if track is not None:
                track(sock)
            sock.settimeout(timeout_s)
            sock.sendall(START + message.encode("utf-8") + END)
            data = b""
            while END not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        return Hl7Outcome(f"MLLP: {_os_error_text(exc)}")
    if START not in data or END not in data:
        return Hl7Outcome("MLLP: no acknowledgement")
    text = data[data.index(START) + 1:data.index(END)].decode("utf-8", errors="replace")
    try:
        ack = parse_message(text.replace("\n", "\r"), find_groups=False)
        code = str(ack.msa.msa_1.value or "")
    except Exception:  # noqa: BLE001 - any unparseable answer is no acknowledgement
        return Hl7Outcome("MLLP: acknowledgement not understood")
    if code in ("AA", "CA"):
        return Hl7Outcome(None, ack_code=code)
    if code in ("AE", "CE"):
        return Hl7Outcome(f"HL7 ACK {code} (application error: the message was refused)", True, code)
    return Hl7Outcome(f"HL7 ACK {code or '?'} (application reject: retried)", False, code)
