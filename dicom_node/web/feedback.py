"""Radiologist feedback on a study's AI result (after IHE AI Result Assessment): accept or
reject it, optionally with the finding seen; recorded with who (a named login or the trusted
proxy's user), when, and the model version, operating point and threshold that made the
result; audited (``110110`` Patient Record, UIDs and user only); shown on the worklist and the
study page; exported by ``cxr-triage reconcile --feedback`` as outcomes, whose discordant
cases feed retraining (``evaluation/reconcile.py``).

The form posts to ``POST /studies/{uid}/feedback`` (``routes_pages``), scripts to
``POST /api/studies/{uid}/feedback`` (``routes_api``); both end in :func:`give_feedback`.
"""

from __future__ import annotations

import logging

from fastapi import HTTPException, Request

from cxr_triage.contract.study import FeedbackRecord
from cxr_triage.dicom_node.store.feedback import FEEDBACK_VERDICTS
from cxr_triage.dicom_node.web.auth import current_user
from cxr_triage.dicom_node.web.deps import get_source

log = logging.getLogger(__name__)

#: The verdicts the job store keeps (``FEEDBACK_VERDICTS``) -> the words on the form's buttons.
VERDICTS = {v: f"{v.capitalize()} the AI result" for v in FEEDBACK_VERDICTS}
#: What the radiologist saw (optional): key -> words on the page. "normal" makes the read
#: normal; any other finding makes it abnormal (``evaluation/reconcile.py``).
FINDINGS = {
    "normal": "No abnormality",
    "consolidation": "Consolidation / pneumonia",
    "nodule_mass": "Nodule or mass",
    "effusion": "Pleural effusion",
    "pneumothorax": "Pneumothorax",
    "cardiomegaly": "Cardiomegaly",
    "atelectasis": "Atelectasis",
    "other": "Other abnormality",
}
NAMED_LOGIN_NEEDED = ("feedback needs a named login: a per-user token ([web] user_tokens) or the "
                      "user header of a trusted reverse proxy ([web] trusted_user_header)")


def give_feedback(request: Request, study_uid: str, verdict: str, finding: str = "") -> FeedbackRecord:
    """Check, store and audit one assessment; the stored record. HTTPException: 400 for a
    bad verdict or finding, 403 without a named user, 404/409 for no such study / no result
    yet, 501 when the source keeps no feedback."""
    if verdict not in VERDICTS:
        raise HTTPException(status_code=400, detail=f"verdict must be one of {', '.join(VERDICTS)}")
    if finding and finding not in FINDINGS:
        raise HTTPException(status_code=400, detail=f"finding must be empty or one of {', '.join(FINDINGS)}")
    user = current_user(request)
    if not user:
        raise HTTPException(status_code=403, detail=NAMED_LOGIN_NEEDED)
    record = getattr(get_source(request), "record_feedback", None)
    if record is None:
        raise HTTPException(status_code=501, detail="this worklist keeps no feedback")
    try:
        stored: FeedbackRecord | None = record(study_uid, verdict, finding or None, user)
    except LookupError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    if stored is None:
        raise HTTPException(status_code=404, detail=f"no study {study_uid}")
    audit = getattr(request.app.state, "audit", None)
    if audit is not None:
        from cxr_triage.dicom_node.store import audit as A

        audit.record(A.PATIENT_RECORD, A.SUCCESS, action="C", user=user, study_uid=study_uid,
                     result_id=stored.result_id, verdict=verdict, finding=finding or None,
                     model_version=stored.model_version, detail="AI result assessment")
    log.info("AI result assessed", extra={"study_uid": study_uid, "result_id": stored.result_id,
                                          "verdict": verdict, "user": user})
    return stored
