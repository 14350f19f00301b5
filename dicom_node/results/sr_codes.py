"""The coded concepts of the result SR: one stable, documented mapping (docs/conformance.md, "Result codes").

Standard codes (DCM, SCT, UCUM, LN) are used wherever DICOM or SNOMED CT has the concept.
Where none exists (a triage decision that is not a diagnosis, "not assessable" and its
reasons, an uncalibrated-vs-calibrated model score, the operating point, the nodule/mass
score and flag of a multi-task model) the concepts come
from the private coding scheme ``99CXRT`` ("99" prefix: a local scheme, DICOM PS3.16 §8.2),
identified in every SR by a Coding Scheme Identification Sequence item.

Code values in 99CXRT are never reused or renumbered: a consumer (worklist, evaluation
harness, audit) may rely on them across releases. Add new codes at the end.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from cxr_triage.contract.result import Decision, EscalationReason, NotAssessableReason

SCHEME = "99CXRT"
SCHEME_NAME = "cxr-triage result codes"
SCHEME_VERSION = "1"
SCHEME_ORGANIZATION = "cxr-triage project"


def _cxrt(value: str, meaning: str) -> Code:
    return Code(value=value, scheme_designator=SCHEME, meaning=meaning)


# --- Concept names (the "question" of an SR content item) ------------------------------
TRIAGE_DECISION = _cxrt("CXRT001", "AI triage decision")
ABNORMALITY_SCORE = _cxrt("CXRT002", "AI abnormality score")
OPERATING_POINT_THRESHOLD = _cxrt("CXRT003", "Operating point threshold")
OPERATING_POINT = _cxrt("CXRT004", "Operating point")
NOT_ASSESSABLE_REASON = _cxrt("CXRT005", "Not assessable reason")
NOT_ASSESSABLE_DETAIL = _cxrt("CXRT006", "Not assessable reason detail")
# UIDREF to a refused instance that is not an image (an SR IMAGE item may not point at it).
NON_IMAGE_SOURCE = _cxrt("CXRT007", "Non-image source instance")
# CONTAINER for the result of a refused instance that is not an image: no image region can be
# drawn on it, so it is not a measurement group (OHIF needs an SCOORD in every group).
NON_IMAGE_RESULT = _cxrt("CXRT008", "Non-image instance result")
# The nodule/mass output of a multi-task model (CXRT02x): an added finding beside the triage
# decision, never a change of it. Written only when the model has that output.
# NUM, unit 1: calibrated P(nodule or mass) of a film (study: the highest film's).
NODULE_MASS_SCORE = _cxrt("CXRT020", "AI nodule/mass score")
# NUM, unit 1: the nodule/mass operating point's threshold (flag when score >= threshold).
NODULE_MASS_THRESHOLD = _cxrt("CXRT021", "Nodule/mass threshold")
# CODE, value Present / Absent (SCT): the flag at that threshold. Not SNOMED CT's "Nodule" or
# "Mass of lung": a calibrated model call at an operating point, not a located diagnosis.
NODULE_MASS_FLAG = _cxrt("CXRT022", "AI nodule/mass flag")
# TEXT: the nodule/mass operating point in words (contract.nodule_point): its share of validation
# normals and sensitivity on validation Nodule/Mass films; for a model that gives its score
# without a flag (too few Nodule/Mass films caught at that point), "score only, no flag" and why.
# Report level, beside NODULE_MASS_SCORE; the flag (CXRT022) and threshold (CXRT021) are then absent.
NODULE_MASS_POINT = _cxrt("CXRT023", "AI nodule/mass operating point")

# Observations of the HL7 ORU^R01 to the RIS only (CXRT03x; delivery/hl7.py), not in the SR.
# NM: the reading order of the decision, 1 suspicious, 2 not assessable, 3 likely normal.
TRIAGE_RANK = _cxrt("CXRT030", "AI triage rank")
# ST: the SOP Instance UID of the result SR the message reports.
RESULT_SR = _cxrt("CXRT031", "AI triage result SR")

# The prior-result safety rule (CXRT04x): why a likely-normal call was raised to suspicious,
# and the prior result it used (report-level evaluations; also in the HL7 OBX).
# CODE: the escalation reason (values: ESCALATION_CODES).
ESCALATION_REASON = _cxrt("CXRT040", "AI triage escalation reason")
# CONTAINER: the prior result used; holds Study Instance UID (DCM 110180, UIDREF), Study Date
# (DCM 111060, DATE), PRIOR_RESULT_SR (UIDREF) and PRIOR_FINDING (CODE).
PRIOR_RESULT = _cxrt("CXRT042", "Prior AI triage result used")
# UIDREF: the SOP Instance UID of this node's result SR of the prior study.
PRIOR_RESULT_SR = _cxrt("CXRT043", "Prior AI triage result SR")
# CODE: what that result said: Suspicious (CXRT011) or AI nodule/mass flag (CXRT022).
PRIOR_FINDING = _cxrt("CXRT044", "Prior AI triage finding")
STUDY_UID = codes.DCM.StudyInstanceUID           # 110180
STUDY_DATE = codes.DCM.StudyDate                 # 111060

# --- Triage decisions (values of TRIAGE_DECISION) ---------------------------------------
DECISION_CODES: dict[Decision, Code] = {
    Decision.LIKELY_NORMAL: _cxrt("CXRT010", "Likely normal"),
    Decision.SUSPICIOUS: _cxrt("CXRT011", "Suspicious"),
    Decision.NOT_ASSESSABLE: _cxrt("CXRT012", "Not assessable"),
}

# --- Not-assessable reasons (values of NOT_ASSESSABLE_REASON) ---------------------------
REASON_CODES: dict[NotAssessableReason, Code] = {
    NotAssessableReason.NON_IMAGE: _cxrt("CXRT101", "Not an image"),
    NotAssessableReason.UNSUPPORTED_SOP_CLASS: _cxrt("CXRT102", "Unsupported SOP class"),
    NotAssessableReason.MULTI_FRAME: _cxrt("CXRT103", "Multi-frame image"),
    NotAssessableReason.COLOR: _cxrt("CXRT104", "Not a grayscale radiograph"),
    NotAssessableReason.LATERAL_VIEW: _cxrt("CXRT105", "Lateral view"),
    NotAssessableReason.NON_CHEST: _cxrt("CXRT106", "Not a chest image"),
    NotAssessableReason.PAEDIATRIC: _cxrt("CXRT107", "Patient below minimum age"),
    NotAssessableReason.NON_HUMAN: _cxrt("CXRT108", "Not a human patient"),
    NotAssessableReason.TOO_SMALL: _cxrt("CXRT109", "Image too small"),
    NotAssessableReason.UNDECODABLE: _cxrt("CXRT110", "Pixel data not decodable"),
    NotAssessableReason.NOT_RADIOGRAPH: _cxrt("CXRT111", "Not a radiograph"),
    NotAssessableReason.NOT_UPRIGHT: _cxrt("CXRT112", "Film not upright"),
}

# --- Escalation reasons (values of ESCALATION_REASON) -----------------------------------
ESCALATION_CODES: dict[EscalationReason, Code] = {
    EscalationReason.PRIOR_SUSPICIOUS: _cxrt("CXRT041", "Prior suspicious result"),
}

# --- Standard codes -----------------------------------------------------------------------
# TID 1501 Finding (121071): the standard reading of an assessable result.
FINDING = codes.DCM.Finding
FINDING_ABNORMAL = codes.SCT.Abnormal            # 263654008
FINDING_NORMAL = codes.SCT.Normal                # 17621005
# Qualitative evaluation "Abnormal" = Present / Absent (assessable films only).
PRESENT = codes.SCT.Present                      # 52101004
ABSENT = codes.SCT.Absent                        # 272519000
FINDING_SITE_CHEST = codes.SCT.Chest             # 816094009
NO_UNITS = codes.UCUM.NoUnits                    # (1, UCUM, "no units")
# TID 1500 row 12: the report-level container holding the study's decision (and reasons).
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
# Procedure reported when the source carries no Procedure Code Sequence.
PROCEDURE_XR_UNSPECIFIED = Code("43468-8", "LN", "XR unspecified body region")
# IHE AI Results: Purpose of Reference of the algorithm's Contributing Equipment item.
IHE_PROCESSING_ALGORITHM = Code("Newcode1", "99IHE", "Processing Algorithm")

# Tracking identifiers (TID 4108) of the film groups; the reader keys on them. The study group
# exists only when no film is an image (highdicom needs one group; nothing for OHIF to show).
STUDY_GROUP_ID = "cxr-triage study result"
FILM_GROUP_PREFIX = "cxr-triage film result "

# Standard Finding for each decision; not assessable has no finding.
FINDING_FOR_DECISION: dict[Decision, Code | None] = {
    Decision.LIKELY_NORMAL: FINDING_NORMAL,
    Decision.SUSPICIOUS: FINDING_ABNORMAL,
    Decision.NOT_ASSESSABLE: None,
}


def _key(code: Code) -> tuple[str, str]:
    return (str(code.value), str(code.scheme_designator))


_DECISION_BY_KEY = {_key(c): d for d, c in DECISION_CODES.items()}
_REASON_BY_KEY = {_key(c): r for r, c in REASON_CODES.items()}
_ESCALATION_BY_KEY = {_key(c): r for r, c in ESCALATION_CODES.items()}


def decision_from_code(code: Code) -> Decision:
    """The Decision a coded value stands for; KeyError for codes not in this mapping."""
    return _DECISION_BY_KEY[_key(code)]


def reason_from_code(code: Code) -> NotAssessableReason:
    """The NotAssessableReason a coded value stands for; KeyError when unknown."""
    return _REASON_BY_KEY[_key(code)]


def escalation_from_code(code: Code) -> EscalationReason:
    """The EscalationReason a coded value stands for; KeyError when unknown."""
    return _ESCALATION_BY_KEY[_key(code)]


def same_code(a: Code, b: Code) -> bool:
    """Codes are equal by value and scheme; meanings are display text and may differ."""
    return _key(a) == _key(b)


def mapping_table() -> list[tuple[str, str, str, str]]:
    """(what, code value, scheme, meaning) rows: the table in docs/conformance.md is generated from this."""
    rows = [
        ("concept: triage decision", *_row(TRIAGE_DECISION)),
        ("concept: abnormality score (calibrated P(abnormal), unit 1)", *_row(ABNORMALITY_SCORE)),
        ("concept: operating point threshold (unit 1)", *_row(OPERATING_POINT_THRESHOLD)),
        ("concept: operating point name (TEXT)", *_row(OPERATING_POINT)),
        ("concept: not assessable reason", *_row(NOT_ASSESSABLE_REASON)),
        ("concept: not assessable detail (TEXT)", *_row(NOT_ASSESSABLE_DETAIL)),
        ("concept: refused non-image instance (UIDREF)", *_row(NON_IMAGE_SOURCE)),
        ("container: result of a refused non-image instance", *_row(NON_IMAGE_RESULT)),
        ("concept: nodule/mass score (calibrated P(nodule or mass), unit 1)", *_row(NODULE_MASS_SCORE)),
        ("concept: nodule/mass threshold (unit 1)", *_row(NODULE_MASS_THRESHOLD)),
        ("concept: nodule/mass flag (value Present / Absent)", *_row(NODULE_MASS_FLAG)),
        ("concept: nodule/mass operating point in words, or why no flag is given (TEXT)",
         *_row(NODULE_MASS_POINT)),
        ("HL7 OBX only: triage rank (NM: 1 suspicious, 2 not assessable, 3 likely normal)", *_row(TRIAGE_RANK)),
        ("HL7 OBX only: the result SR's SOP Instance UID (ST)", *_row(RESULT_SR)),
        ("concept: escalation reason (prior-result safety rule)", *_row(ESCALATION_REASON)),
        ("container: the prior result used", *_row(PRIOR_RESULT)),
        ("concept: the prior result's SR (UIDREF; also HL7 OBX ST)", *_row(PRIOR_RESULT_SR)),
        ("concept: what the prior result said (value Suspicious / AI nodule/mass flag)", *_row(PRIOR_FINDING)),
        ("concept: the prior's Study Instance UID (UIDREF)", *_row(STUDY_UID)),
        ("concept: the prior's Study Date (DATE)", *_row(STUDY_DATE)),
    ]
    rows += [(f"decision {d.value}", *_row(c)) for d, c in DECISION_CODES.items()]
    rows += [(f"reason {r.value}", *_row(c)) for r, c in REASON_CODES.items()]
    rows += [(f"escalation {r.value}", *_row(c)) for r, c in ESCALATION_CODES.items()]
    rows += [
        ("Finding (121071) when suspicious", *_row(FINDING_ABNORMAL)),
        ("Finding (121071) when likely normal", *_row(FINDING_NORMAL)),
        ("Abnormal = Present (suspicious)", *_row(PRESENT)),
        ("Abnormal = Absent (likely normal)", *_row(ABSENT)),
        ("nodule/mass flag = Present (score >= threshold)", *_row(PRESENT)),
        ("nodule/mass flag = Absent (score < threshold)", *_row(ABSENT)),
        ("Finding Site", *_row(FINDING_SITE_CHEST)),
        ("report-level container: the study's decision (TID 1500 row 12)",
         *_row(QUALITATIVE_EVALUATIONS)),
        ("score and threshold unit", *_row(NO_UNITS)),
        ("procedure reported (no Procedure Code Sequence)", *_row(PROCEDURE_XR_UNSPECIFIED)),
        ("Contributing Equipment purpose (IHE AIR)", *_row(IHE_PROCESSING_ALGORITHM)),
    ]
    return rows


def _row(code: Code) -> tuple[str, str, str]:
    return (str(code.value), str(code.scheme_designator), str(code.meaning))
