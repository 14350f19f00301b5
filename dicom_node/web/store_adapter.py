"""The node's job store seen as a worklist source: its read side
(:class:`~cxr_triage.dicom_node.store.queries.StudyQueries`, typed as
:class:`~cxr_triage.contract.study.StudyRecord`) and its one write the worklist needs, the
radiologist's feedback (:class:`~cxr_triage.dicom_node.store.feedback.FeedbackWriter`).
"""

from __future__ import annotations

from pathlib import Path

from cxr_triage.contract.study import AssessedResult, FeedbackRecord, StudyRecord
from cxr_triage.dicom_node.store.queries import StudyQueries
from cxr_triage.dicom_node.web.worklist import QueueStats

#: How many studies one worklist query reads at most (the page shows ``[web] max_rows``).
SCAN_LIMIT = 5000


class StoreWorklist:
    """A :class:`~cxr_triage.dicom_node.web.worklist.WorklistSource` over the node's job store."""

    def __init__(self, queries: StudyQueries, state_dir: str | Path | None = None):
        self._queries = queries
        self.state_dir = Path(state_dir) if state_dir else None

    def list_studies(self, since: float | None = None, until: float | None = None) -> list[StudyRecord]:
        return self._queries.studies(since, until, limit=SCAN_LIMIT)

    def get_study(self, study_instance_uid: str) -> StudyRecord | None:
        return self._queries.study(study_instance_uid)

    def record_feedback(self, study_instance_uid: str, verdict: str, finding: str | None,
                        user: str) -> FeedbackRecord | None:
        """Store a radiologist's assessment of the study's current AI result, with the model
        and threshold that made it; None for an unknown study, LookupError before a result."""
        record = self._queries.study(study_instance_uid)
        if record is None:
            return None
        if record.result_id is None or record.result is None:
            raise LookupError("the study has no AI result yet")
        r, o = record.result, record.result.outcome
        assessed = AssessedResult(decision=o.decision.value, score=o.score, model_name=r.model_name,
                                  model_version=r.model_version, operating_point=o.operating_point,
                                  threshold=o.threshold)
        fid = self._queries.feedback_writer().add(study_instance_uid, record.result_id, verdict, user,
                                                  finding=finding, assessed=assessed)
        return next(f for f in self._queries.feedback_records(study_instance_uid) if f.id == fid)

    def stats(self) -> QueueStats:
        q = self._queries
        counts = q.counts()
        studies = counts.get("studies", {})
        deliveries = counts.get("deliveries", {})
        oldest = q.oldest_pending()
        return QueueStats(
            instances_received=int(counts.get("instances", 0)),
            studies_by_decision={k: int(v) for k, v in counts.get("decisions", {}).items()},
            queue_depth=int(studies.get("receiving", 0) + studies.get("processing", 0)
                            + deliveries.get("pending", 0) + deliveries.get("sending", 0)),
            oldest_pending_received_at=oldest["since"] if oldest else None,
            delivery_failures=int(q.failed_attempts()),
            dead_letters=int(deliveries.get("dead", 0)),
            latencies_s=[max(0.0, v) for v in q.study_latencies()],
        )

    def model_info(self) -> dict[str, str]:
        """Name and version of the model behind the latest result (when the node gives none)."""
        return self._queries.latest_model()
