"""Reading films, the intended-use gate, ONNX Runtime scoring and the triage decision.

Imports neither torch nor MONAI (tests/inference/test_no_torch.py proves it in a fresh interpreter).
"""

from cxr_triage.contract.result import (
    Decision,
    FilmResult,
    NotAssessable,
    NotAssessableReason,
    StudyResult,
    aggregate_study,
)

__all__ = [
    "Decision",
    "FilmResult",
    "NotAssessable",
    "NotAssessableReason",
    "StudyResult",
    "aggregate_study",
]
