"""THE triage decision: where a score becomes *suspicious* or *likely normal*.

Everything else in the worker (reading, gating, scoring, reporting) exists to feed this one
comparison. The threshold comes from the model's stored operating points (chosen on
validation data for a target sensitivity) or from a site's commissioning file.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from cxr_triage.contract.result import Decision


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
