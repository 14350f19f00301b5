"""The one thing the worklist writes: a radiologist's assessment of a study's AI result.

After IHE AI Result Assessment: accept or reject, optionally the finding seen, with who,
when, and the model, operating point and threshold behind the result. :class:`FeedbackWriter`
is deliberately narrow so the web holds no other write access to the job store.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from cxr_triage.contract.study import AssessedResult
from cxr_triage.dicom_node.store.db import Database

FEEDBACK_VERDICTS = ("accept", "reject")


class FeedbackWriter:
    """Writes ``feedback`` rows of one :class:`Database`, nothing else."""

    def __init__(self, db: Database):
        self._db = db

    def add(self, study_uid: str, result_id: int, verdict: str, user: str, *, finding: str | None = None,
            assessed: AssessedResult = AssessedResult(), now: float | None = None) -> int:
        """Store one assessment; its row id. ``verdict``: one of :data:`FEEDBACK_VERDICTS`;
        ``now``: Unix seconds (default: the clock). ValueError for another verdict or no user."""
        if verdict not in FEEDBACK_VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(FEEDBACK_VERDICTS)}")
        if not user:
            raise ValueError("feedback needs the user who gave it")
        now = time.time() if now is None else now
        a = asdict(assessed)
        with self._db.transaction() as con:
            fid = con.execute(
                "INSERT INTO feedback (study_uid, result_id, verdict, finding, \"user\", at, decision, score,"
                " model_name, model_version, operating_point, threshold) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
                " RETURNING id",
                (study_uid, result_id, verdict, finding or None, user, now, a["decision"], a["score"],
                 a["model_name"], a["model_version"], a["operating_point"], a["threshold"])).fetchall()
            return int(fid[0][0])
