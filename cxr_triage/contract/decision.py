"""THE triage decision: where a score becomes *suspicious* or *likely normal*.

Everything else in the worker (reading, gating, scoring, reporting) exists to feed this one
comparison. The threshold comes from the model's stored operating points (chosen on
validation data for a target sensitivity) or from a site's commissioning file.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from cxr_triage.contract.result import Decision, Escalation, EscalationReason, PriorStudy, StudyResult


def decide(score: float, threshold: float) -> Decision:
    """Suspicious when the calibrated P(abnormal) reaches the operating threshold.

    A score that is not a number never reads as normal: it is called suspicious so the film
    keeps its place in the radiologist's list.
    """
    if math.isnan(score) or score >= threshold:
        return Decision.SUSPICIOUS
    return Decision.LIKELY_NORMAL


def decide_many(scores: npt.ArrayLike, threshold: float) -> npt.NDArray[np.bool_]:
    """Vectorised :func:`decide` for offline callers: (N,) scores -> (N,) bool, True = suspicious.

    The same rule: suspicious when score >= threshold, and a NaN score is suspicious."""
    s = np.asarray(scores, dtype=np.float64)
    return np.isnan(s) | (s >= threshold)


def escalate_for_priors(result: StudyResult, priors: Sequence[PriorStudy], *, on: dt.date,
                        window_days: int) -> StudyResult:
    """The prior-result safety rule: a study is not called likely normal when the same patient
    had a suspicious result or a nodule/mass flag of this node within ``window_days`` before
    ``on`` (the study's date). It is then called suspicious, with the coded reason
    :attr:`EscalationReason.PRIOR_SUSPICIOUS` and the newest such prior
    (:class:`Escalation`); its own score stays as scored.

    ``priors`` must already be the same patient's (``patient.PatientKey.same_id``, without a
    name or birth-date mismatch). Suspicious and not-assessable results are returned as they
    are, as is a result without such a prior (prior dates unknown or after ``on`` never count).
    """
    if result.decision is not Decision.LIKELY_NORMAL:
        return result
    recent = [(day, p) for p in priors if p.suspicious and p.study_uid != result.study_instance_uid
              for day in [parse_da(p.study_date)] if day is not None and 0 <= (on - day).days <= window_days]
    if not recent:
        return result
    _, prior = max(recent, key=lambda pair: pair[0])
    return replace(result, decision=Decision.SUSPICIOUS, escalation=Escalation(
        reason=EscalationReason.PRIOR_SUSPICIOUS, prior_study_uid=prior.study_uid,
        prior_study_date=prior.study_date, prior_sr_uid=prior.sr_uid,
        prior_finding="suspicious" if prior.decision is Decision.SUSPICIOUS else "nodule_mass"))


def parse_da(text: str | None) -> dt.date | None:
    """A DICOM DA value (PS3.5 6.2: YYYYMMDD) -> a date; None when empty or not a date."""
    try:
        return dt.datetime.strptime(str(text or "").strip(), "%Y%m%d").date()
    except ValueError:
        return None
