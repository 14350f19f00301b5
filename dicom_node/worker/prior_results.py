"""The ``priors`` stage's work: the patient's earlier studies onto the study result, and the
prior-result safety rule (``cxr_triage.contract.decision.escalate_for_priors``) applied after
aggregation. Never fails triage: a study without a Patient ID has no priors, and a PACS that
cannot be asked leaves the node's own results (:mod:`cxr_triage.dicom_node.priors.lookup`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import replace

from pydicom import Dataset

from cxr_triage.config import Config
from cxr_triage.contract.decision import escalate_for_priors, parse_da
from cxr_triage.contract.patient import PatientKey
from cxr_triage.contract.result import StudyResult
from cxr_triage.dicom_node.priors.lookup import PriorLookup

log = logging.getLogger(__name__)


def with_priors(cfg: Config, lookup: PriorLookup, result: StudyResult,
                sources: Sequence[Dataset]) -> StudyResult:
    """``result`` with the patient's earlier studies (``priors``, newest first) and, with
    ``[priors] escalate``, escalated by a recent suspicious prior (logged with the UIDs)."""
    patient = next((k for k in (PatientKey.from_header(ds) for ds in sources) if k), None)
    if patient is None:
        return result
    on = next((d for d in (parse_da(ds.get("StudyDate")) for ds in sources) if d), dt.date.today())
    priors = lookup.find(result.study_instance_uid, patient, on)
    result = replace(result, priors=priors)
    if not cfg.priors.escalate:
        return result
    escalated = escalate_for_priors(result, priors, on=on, window_days=cfg.priors.escalation_days)
    if escalated.escalation is not None:
        log.info("study escalated by a prior result", extra={
            "study_uid": result.study_instance_uid, "reason": escalated.escalation.reason.value,
            "prior_study_uid": escalated.escalation.prior_study_uid,
            "prior_sr_uid": escalated.escalation.prior_sr_uid})
    return escalated
