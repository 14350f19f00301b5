"""Validation figures of a training run: AUROC, per-source AUROC and the selection metric.

AUROC is MONAI's ``compute_roc_auc`` (the Mann-Whitney statistic); the selection metric is
what early stopping and the best checkpoint follow (``TrainConfig.select_metric``).
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np

from cxr_triage.training.manifest import Entry


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """MONAI's ROC AUC of scores (N,) against 0/1 labels (N,); NaN when only one class is present."""
    import torch  # torch and MONAI only once training runs
    from monai.metrics import compute_roc_auc

    y = np.asarray(labels)
    if y.min() == y.max():
        return float("nan")
    auc = compute_roc_auc(torch.as_tensor(np.asarray(scores, dtype=np.float64)), torch.as_tensor(y))
    return float(cast(float, auc))  # a float for 1-D input (MONAI's annotation covers every `average`)


def per_source(scores: np.ndarray, entries: list[Entry]) -> dict[str, dict[str, float]]:
    """AUROC (both classes present) and mean score by label for each source; ``scores`` (N,)
    in ``entries`` order."""
    labels = np.array([e.label for e in entries])
    out: dict[str, dict[str, float]] = {}
    for src in sorted({e.source for e in entries}):
        m = np.array([e.source == src for e in entries])
        row = {"films": int(m.sum()), "abnormal": int(labels[m].sum()), "auroc": auroc(scores[m], labels[m])}
        for lab, name in ((0, "normal"), (1, "abnormal")):
            mm = m & (labels == lab)
            if mm.any():
                row[f"mean_score_{name}"] = float(np.mean(scores[mm]))
        out[src] = row
    return out


def selection_score(metric: str, logits: np.ndarray, labels: np.ndarray, entries: list[Entry],
                    nodule_auroc: float) -> float:
    """The early-stopping figure of the selected validation films: ``auroc`` (pooled),
    ``source_mean_auroc`` (mean of the per-source AUROCs) or ``source_mean_auroc_nodule``
    (that mean with the nodule/mass AUROC, when defined). ``logits``/``labels`` (N,) in
    ``entries`` order; NaN when no AUROC is defined."""
    if metric in ("source_mean_auroc", "source_mean_auroc_nodule"):
        vals = [v["auroc"] for v in per_source(logits, entries).values() if not math.isnan(v["auroc"])]
        if metric == "source_mean_auroc_nodule" and not math.isnan(nodule_auroc):
            vals.append(nodule_auroc)
        return float(np.mean(vals)) if vals else float("nan")
    return auroc(logits, labels)
