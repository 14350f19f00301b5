"""The reading-room worklist: what a study looks like to the web page, and its order.

Order (``order_worklist``): studies whose wait passed the configured maximum come first
(oldest first), because AI prioritisation has been shown to lengthen worst-case waits
(Baltruschat et al., Eur Radiol 2021) and a likely-normal film must not be pushed down
forever; then suspicious, not assessable, still being triaged, likely normal; within each
band the longest-waiting study first.

The web layer reads the node's job store only through :class:`WorklistSource`, so the page,
the JSON API and the metrics do not depend on the store's table layout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

from cxr_triage.contract.result import Decision

#: Bands of the worklist, top first. "overdue" is any not-suspicious study past the maximum wait.
BANDS: tuple[str, ...] = ("overdue", "suspicious", "not_assessable", "pending", "likely_normal")

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
}


@dataclass
class FilmEntry:
    """One received instance and what triage said about it."""

    sop_instance_uid: str
    decision: str | None = None          # Decision value; None while not yet triaged
    score: float | None = None
    threshold: float | None = None
    operating_point: str | None = None
    reason: str | None = None            # NotAssessableReason value
    reason_detail: str | None = None
    nodule_score: float | None = None    # calibrated P(nodule or mass); None: no such output
    nodule_threshold: float | None = None
    nodule_flag: bool | None = None      # nodule_score >= nodule_threshold
    sop_class_uid: str | None = None
    series_instance_uid: str | None = None
    spool_path: str | None = None        # the received file, for rendering
    model_version: str | None = None


@dataclass
class DeliveryEvent:
    """One attempt to deliver the result (or its current state)."""

    time: float
    destination: str
    outcome: str                          # e.g. delivered, failed, retrying, dead_letter, outbox
    detail: str = ""


@dataclass
class StudyEntry:
    """One study as the worklist shows it; times are Unix seconds (UTC)."""

    study_instance_uid: str
    received_at: float
    decision: str | None = None           # None while pending
    score: float | None = None
    nodule_score: float | None = None     # the highest film nodule/mass score
    nodule_flag: bool | None = None       # any film flagged; None: no nodule/mass output (or pending)
    triaged_at: float | None = None
    delivery_status: str = "pending"
    n_instances: int = 0
    films: list[FilmEntry] = field(default_factory=list)
    deliveries: list[DeliveryEvent] = field(default_factory=list)
    result_path: str | None = None        # the SR the node built, when kept on disk
    model_name: str | None = None
    model_version: str | None = None
    reason: str | None = None             # plain reason for a not-assessable study
    amended: bool = False                 # the current result replaced an earlier one
    feedback_verdict: str | None = None   # the latest radiologist assessment of the current result
    feedback_user: str | None = None
    feedback: list[dict[str, Any]] = field(default_factory=list)   # every assessment (study page)
    # the study as people know it (PHI: shown behind the login, never logged)
    accession_number: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None           # DICOM PN, e.g. "Doe^Jane"

    @property
    def status(self) -> str:
        """Decision value, or "pending" while triage has not finished."""
        return self.decision or "pending"

    def wait_s(self, now: float) -> float:
        return max(0.0, now - self.received_at)


@dataclass
class QueueStats:
    """Operator view of the node, for /metrics."""

    instances_received: int = 0
    studies_by_decision: dict[str, int] = field(default_factory=dict)
    queue_depth: int = 0                  # jobs not finished (received, triaging, delivering)
    oldest_pending_received_at: float | None = None
    delivery_failures: int = 0            # failed delivery attempts, all time
    dead_letters: int = 0
    latencies_s: list[float] = field(default_factory=list)  # received -> result, per study


class WorklistSource(Protocol):
    """What the web layer needs from the node's store (see ``store_adapter``)."""

    def list_studies(self, since: float | None = None, until: float | None = None) -> list[StudyEntry]:
        ...

    def get_study(self, study_instance_uid: str) -> StudyEntry | None:
        ...

    def stats(self) -> QueueStats:
        ...


def band(entry: StudyEntry, now: float, max_wait_s: float) -> str:
    """The worklist band of one study (see module docstring)."""
    status = entry.status
    if status != Decision.SUSPICIOUS.value and max_wait_s > 0 and entry.wait_s(now) >= max_wait_s:
        return "overdue"
    return status if status in BANDS else "pending"


def order_worklist(entries: Iterable[StudyEntry], now: float | None = None,
                   max_wait_s: float = 0.0) -> list[tuple[str, StudyEntry]]:
    """(band, study) pairs in reading order; ``max_wait_s`` <= 0 disables the cap."""
    now = time.time() if now is None else now
    rank = {b: i for i, b in enumerate(BANDS)}
    keyed = [(band(e, now, max_wait_s), e) for e in entries]
    keyed.sort(key=lambda be: (rank[be[0]], be[1].received_at, be[1].study_instance_uid))
    return keyed


def filter_studies(entries: Iterable[StudyEntry], decisions: Iterable[str] | None = None) -> list[StudyEntry]:
    """Keep studies whose status (decision or "pending") is one of ``decisions`` (all if empty)."""
    wanted = {d for d in (decisions or []) if d}
    return [e for e in entries if not wanted or e.status in wanted]
