"""Figures per subgroup of the reported films (sex, age band, view, source): counts, AUROC,
sensitivity and specificity, each with its interval, so a weak subgroup shows instead of
averaging away in the pooled figures.

Same conventions as :mod:`cxr_triage.evaluation.metrics` (``y`` 1 abnormal, 0 normal; ``s`` the
calibrated P(abnormal); suspicious at ``s >= threshold``); DeLong AUROC and Wilson intervals.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from cxr_triage.evaluation.metrics import (
    Labels,
    Scores,
    auroc_delong,
    confusion_at,
    label_score_arrays,
    proportion,
)


def subgroup_metrics(
    y: Labels, s: Scores, group_values: Sequence[str], threshold: float,
    confidence: float = 0.95, min_auc_class: int = 2, order: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Per subgroup value: counts, AUROC (DeLong CI, when each class has >= ``min_auc_class``
    films), sensitivity and specificity at ``threshold`` with Wilson CIs. Small groups get
    wide intervals rather than being hidden."""
    y_arr, s_arr = label_score_arrays(y, s)
    vals = np.asarray([str(v) for v in group_values])
    if len(vals) != len(y_arr):
        raise ValueError("one group value per film is needed")
    rows = []
    rank = {v: i for i, v in enumerate(order)}
    for value in sorted(set(vals.tolist()), key=lambda v: (rank.get(v, len(rank)), v)):
        sel = vals == value
        yg, sg = y_arr[sel], s_arr[sel]
        n_abn, n_norm = int(yg.sum()), int(len(yg) - yg.sum())
        auc = auroc_delong(yg, sg, confidence).to_dict() if min(n_abn, n_norm) >= min_auc_class else None
        tp, fn, tn, fp = confusion_at(yg, sg, threshold)
        rows.append({
            "value": value, "n": int(sel.sum()), "n_abnormal": n_abn, "n_normal": n_norm, "auroc": auc,
            "sensitivity": proportion(tp, tp + fn, confidence).to_dict(),
            "specificity": proportion(tn, tn + fp, confidence).to_dict(),
        })
    return rows


AGE_BANDS = ("<16", "16-39", "40-59", "60-79", "80+", "unknown")


def age_band(age: float | None) -> str:
    """Bands used in subgroup tables; under-16s are outside the intended use."""
    if age is None or not math.isfinite(age):
        return "unknown"
    for upper, name in ((16, "<16"), (40, "16-39"), (60, "40-59"), (80, "60-79")):
        if age < upper:
            return name
    return "80+"
