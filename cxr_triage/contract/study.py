"""The study as a reader sees it: one typed read model for the store's read side, the
worklist, its JSON API and the result SR read back.

- :class:`Outcome` — what triage said about one film or the whole study (decision, scores,
  thresholds, not-assessable reasons, the nodule/mass flag); the result SR read back
  (``dicom_node/results/sr_reader.py``) fills the same type;
- :class:`ResultPart` — a study's current result: its :class:`Outcome`, the model behind it and
  the result SR;
- :class:`StudyRecord` — a study row: identity, state, times, result, delivery, feedback, and
  (for one study) its films, delivery history, every assessment and the patient's prior studies.

Frozen dataclasses; times are Unix seconds (UTC); decisions and reasons are the contract's
enums (:mod:`.result`). Imports nothing else of ours but :mod:`.result`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxr_triage.contract.result import Decision, Escalation, NotAssessableReason, PriorStudy

#: What a reader is told: a decision's value (or "pending") and a reason's value in plain words.
PLAIN_DECISION: dict[str, str] = {
    "suspicious": "Suspicious",
    "not_assessable": "Not assessable",
    "likely_normal": "Likely normal",
    "pending": "Being triaged",
}

PLAIN_REASON: dict[str, str] = {
    "non_image": "not an image (no pixel data)",
    "unsupported_sop_class": "image type outside CR/DX/Secondary Capture",
    "multi_frame": "multi-frame image",
    "color": "colour image, not a grayscale radiograph",
    "lateral_view": "lateral view (only frontal films are assessed)",
    "non_chest": "body part is not the chest",
    "paediatric": "patient younger than the intended-use minimum age",
    "non_human": "patient is not human",
    "too_small": "image too small to read",
    "undecodable": "pixel data could not be decoded",
    "not_radiograph": "not a radiograph (a scanned document, screenshot or drawing)",
    "not_upright": "film stored sideways or upside down (no Patient Orientation)",
}

#: Why a likely-normal call was raised to suspicious, in plain words (``EscalationReason`` values).
PLAIN_ESCALATION: dict[str, str] = {
    "prior_suspicious_result": "prior suspicious result",
}


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What triage said about one film or a study.

    ``score``: calibrated P(abnormal), suspicious when ``score >= threshold``
    (:func:`~cxr_triage.contract.decision.decide`) at ``operating_point``; ``reasons``: why it is
    not assessable (a film has one, a study the distinct reasons of its films, in film order);
    ``nodule_*``: the nodule/mass output, an added finding that never changes the decision
    (None when the model has no such output or nothing was scored; ``nodule_flag`` also None when
    the model gives the score without a flag); ``nodule_point``: that point in words
    (:meth:`~cxr_triage.contract.nodule_point.NodulePoint.statement`), why no flag included."""

    decision: Decision
    score: float | None = None
    threshold: float | None = None
    operating_point: str | None = None
    reasons: tuple[NotAssessableReason, ...] = ()
    reason_detail: str | None = None
    nodule_score: float | None = None
    nodule_threshold: float | None = None
    nodule_flag: bool | None = None
    nodule_point: str | None = None

    @property
    def reason(self) -> NotAssessableReason | None:
        """The (first) not-assessable reason; None for an assessed film or study."""
        return self.reasons[0] if self.reasons else None


@dataclass(frozen=True, kw_only=True)
class ResultPart:
    """A study's current result: the study :class:`Outcome`, the model that made it and the
    result SR's SOP Instance UID (None where unknown, e.g. a worklist row); ``escalation``: set
    when a prior result raised the study's likely-normal call to suspicious."""

    outcome: Outcome
    model_name: str | None = None
    model_version: str | None = None
    sr_uid: str | None = None
    escalation: Escalation | None = None


@dataclass(frozen=True)
class Identity:
    """The study as people know it (PHI: shown behind the worklist's login, never logged)."""

    accession_number: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None      # DICOM PN, e.g. "Doe^Jane"


@dataclass(frozen=True, kw_only=True)
class FilmRecord:
    """One received film and, once triaged, what triage said about it."""

    sop_instance_uid: str
    outcome: Outcome | None = None       # None while not yet triaged
    sop_class_uid: str | None = None
    series_instance_uid: str | None = None
    spool_path: str | None = None        # the received file, for rendering
    model_version: str | None = None


@dataclass(frozen=True)
class DeliveryEvent:
    """One attempt to deliver the result, or the present state of a delivery still owed."""

    time: float
    destination: str
    outcome: str                          # delivered, failed, retry scheduled, queued, refused, dead_letter, cancelled
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class AssessedResult:
    """The AI result a radiologist assessed, as it was shown: decision value, score, and the
    model, operating point and threshold that made it."""

    decision: str | None = None
    score: float | None = None
    model_name: str | None = None
    model_version: str | None = None
    operating_point: str | None = None
    threshold: float | None = None


@dataclass(frozen=True, kw_only=True)
class FeedbackRecord(AssessedResult):
    """A radiologist's assessment of an AI result (after IHE AI Result Assessment): accept or
    reject, optionally the finding seen, by whom and when (Unix seconds)."""

    id: int
    study_uid: str
    result_id: int
    verdict: str                          # accept | reject
    finding: str | None
    user: str
    at: float


@dataclass(frozen=True, kw_only=True)
class StudyRecord:
    """One study as a reader sees it.

    ``state``: the job store's (receiving, processing, triaged, failed); ``delivery_status``:
    delivered, pending, failing, refused, dead, none (nothing to deliver), or before a result
    waiting, triaging, triage_failed. ``films``, ``deliveries`` and ``feedback`` are filled for
    one study (a list row leaves them empty)."""

    study_uid: str
    state: str
    received_at: float                    # the first instance
    last_received_at: float | None = None
    generation: int = 1
    n_instances: int = 0
    identity: Identity = Identity()
    result: ResultPart | None = None      # None before triage
    result_id: int | None = None
    triaged_at: float | None = None
    amended: bool = False                 # the current result replaced an earlier one
    sr_path: str | None = None            # the result SR as built, when kept on disk
    delivery_status: str = "waiting"
    feedback_verdict: str | None = None   # the latest assessment of the current result
    feedback_user: str | None = None
    last_error: str | None = None
    films: tuple[FilmRecord, ...] = ()
    deliveries: tuple[DeliveryEvent, ...] = ()
    feedback: tuple[FeedbackRecord, ...] = ()
    priors: tuple[PriorStudy, ...] = ()   # the same patient's earlier studies the result looked at

    @property
    def outcome(self) -> Outcome | None:
        """The study's outcome; None before triage."""
        return self.result.outcome if self.result else None

    @property
    def status(self) -> str:
        """The decision's value, or "pending" while triage has not finished."""
        return self.result.outcome.decision.value if self.result else "pending"

    def wait_s(self, now: float) -> float:
        """Seconds since the first instance arrived (0 for a clock behind it)."""
        return max(0.0, now - self.received_at)
