"""The reading-room worklist: what a study looks like to the web page, and its order.

Order (``order_worklist``): studies whose wait passed the configured maximum come first
(oldest first), because AI prioritisation has been shown to lengthen worst-case waits
(Baltruschat et al., Eur Radiol 2021) and a likely-normal film must not be pushed down
forever; then suspicious, not assessable, still being triaged, likely normal; within each
band the longest-waiting study first.

A study is the contract's read model, :class:`~cxr_triage.contract.study.StudyRecord`. The web
layer reads the node's job store only through :class:`WorklistSource` (``store_adapter``, over
the store's read side), so the page, the JSON API and the metrics do not depend on the store's
table layout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from cxr_triage.contract.result import Decision
from cxr_triage.contract.study import PLAIN_DECISION, PLAIN_REASON, StudyRecord

__all__ = ["BANDS", "PLAIN_DECISION", "PLAIN_REASON", "QueueStats", "WorklistSource", "band",
           "filter_studies", "order_worklist"]

#: Bands of the worklist, top first. "overdue" is any not-suspicious study past the maximum wait.
BANDS: tuple[str, ...] = ("overdue", "suspicious", "not_assessable", "pending", "likely_normal")

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

    def list_studies(self, since: float | None = None, until: float | None = None) -> list[StudyRecord]:
        ...

    def get_study(self, study_instance_uid: str) -> StudyRecord | None:
        ...

    def stats(self) -> QueueStats:
        ...


def band(entry: StudyRecord, now: float, max_wait_s: float) -> str:
    """The worklist band of one study (see module docstring)."""
    status = entry.status
    if status != Decision.SUSPICIOUS.value and max_wait_s > 0 and entry.wait_s(now) >= max_wait_s:
        return "overdue"
    return status if status in BANDS else "pending"


def order_worklist(entries: Iterable[StudyRecord], now: float | None = None,
                   max_wait_s: float = 0.0) -> list[tuple[str, StudyRecord]]:
    """(band, study) pairs in reading order; ``max_wait_s`` <= 0 disables the cap."""
    now = time.time() if now is None else now
    rank = {b: i for i, b in enumerate(BANDS)}
    keyed = [(band(e, now, max_wait_s), e) for e in entries]
    keyed.sort(key=lambda be: (rank[be[0]], be[1].received_at, be[1].study_uid))
    return keyed


def filter_studies(entries: Iterable[StudyRecord], decisions: Iterable[str] | None = None) -> list[StudyRecord]:
    """Keep studies whose status (decision or "pending") is one of ``decisions`` (all if empty)."""
    wanted = {d for d in (decisions or []) if d}
    return [e for e in entries if not wanted or e.status in wanted]
