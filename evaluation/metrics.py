"""Diagnostic-accuracy statistics with confidence intervals: the numbers a department needs.

Convention everywhere: ``y`` is 1 for an abnormal film, 0 for a normal one; ``s`` is the
calibrated P(abnormal); a film with ``s >= threshold`` is *suspicious*, below it *likely
normal*. Intervals are two-sided 95% unless ``confidence`` says otherwise.

Why these methods: Wilson intervals behave at proportions near 1 (sensitivity 0.98 on 50
abnormal films) where the normal approximation overshoots 1; DeLong's variance is the standard
for one AUROC and for two correlated AUROCs on the same films; the patient-level bootstrap
respects several films per patient, which DeLong ignores.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence, TypeAlias

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

from cxr_triage.contract.decision import decide_many
from cxr_triage.contract.operating_points import threshold_for_sensitivity

SENSITIVITY_TARGETS: tuple[float, ...] = (0.90, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)

#: labels (0/1) and scores: a sequence or a 1-D numpy array (both go through :func:`label_score_arrays`)
Labels: TypeAlias = Sequence[int] | np.ndarray
Scores: TypeAlias = Sequence[float] | np.ndarray


def label_score_arrays(y: Labels, s: Scores) -> tuple[np.ndarray, np.ndarray]:
    """(labels int (N,), scores float (N,)); ValueError unless both are 1-D of one length,
    labels 0/1 and scores finite."""
    y_arr = np.asarray(y, dtype=int)
    s_arr = np.asarray(s, dtype=float)
    if y_arr.shape != s_arr.shape or y_arr.ndim != 1:
        raise ValueError(f"labels {y_arr.shape} and scores {s_arr.shape} must be 1-D and equal length")
    if not np.isin(y_arr, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (abnormal)")
    if not np.isfinite(s_arr).all():
        raise ValueError("scores must be finite (drop not-assessable films first)")
    return y_arr, s_arr


def _z(confidence: float) -> float:
    return float(stats.norm.ppf(0.5 + confidence / 2))


# --------------------------------------------------------------------------- proportions

@dataclass(frozen=True)
class Proportion:
    """k of n with a Wilson interval; ``value`` is NaN when n == 0."""

    k: int
    n: int
    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (scipy's implementation); (nan, nan) when n == 0."""
    if n == 0:
        return (math.nan, math.nan)
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def proportion(k: int, n: int, confidence: float = 0.95) -> Proportion:
    low, high = wilson_interval(k, n, confidence)
    return Proportion(int(k), int(n), k / n if n else math.nan, low, high)


def lower_bound(k: int, n: int, confidence: float = 0.95, method: str = "wilson") -> float:
    """Lower end of the two-sided interval (``wilson`` or ``exact`` Clopper-Pearson)."""
    if n == 0:
        return math.nan
    if method == "wilson":
        return wilson_interval(k, n, confidence)[0]
    if method == "exact":
        # Clopper-Pearson in closed form: the alpha/2 quantile of Beta(k, n-k+1) (scipy's
        # binomtest finds the same bound by root search, far slower)
        return 0.0 if k == 0 else float(stats.beta.ppf((1 - confidence) / 2, int(k), int(n) - int(k) + 1))
    raise ValueError(f"unknown interval method {method!r} (wilson|exact)")


# --------------------------------------------------------------------------- AUROC

@dataclass(frozen=True)
class AUC:
    value: float
    se: float
    low: float
    high: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _delong_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Structural components (Sun & Xu 2014 midrank form) for K score rows of shape (K, N).

    Returns (auc (K,), v10 (K, m) over abnormal films, v01 (K, n) over normal films)."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("AUROC needs at least one abnormal and one normal film")
    tz = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    tx = stats.rankdata(pos, axis=1)
    ty = stats.rankdata(neg, axis=1)
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return auc, v10, v01


def delong_covariance(y: Labels, *score_sets: Scores) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs and their DeLong (1988) covariance matrix for scores of several models on the
    same films."""
    y_arr = np.asarray(y, dtype=int)
    rows = np.vstack([label_score_arrays(y_arr, s)[1] for s in score_sets])
    auc, v10, v01 = _delong_components(y_arr, rows)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(rows), len(rows)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(rows), len(rows)))
    return auc, s10 / m + s01 / n


def auroc_delong(y: Labels, s: Scores, confidence: float = 0.95) -> AUC:
    """AUROC with DeLong's standard error; the interval is clipped to [0, 1]."""
    auc, cov = delong_covariance(y, s)
    se = math.sqrt(max(float(cov[0, 0]), 0.0))
    z = _z(confidence)
    value = float(auc[0])
    return AUC(value, se, max(0.0, value - z * se), min(1.0, value + z * se), "delong")


def _cluster_index(groups: Sequence[Any] | None, size: int) -> list[np.ndarray]:
    """Film indices per patient (each film its own cluster when groups is None)."""
    if groups is None:
        return [np.array([i]) for i in range(size)]
    _, inverse = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    splits = np.cumsum(np.bincount(inverse))[:-1]
    return np.split(order, splits)


def bootstrap_statistic(
    statistic: Callable[[np.ndarray], float],
    size: int,
    groups: Sequence[Any] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """Patient-level (cluster) bootstrap: resample patients with replacement, keep all their
    films, evaluate ``statistic(indices)``. Replicates where it is undefined (NaN) are dropped."""
    clusters = _cluster_index(groups, size)
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, len(clusters), len(clusters))
        idx = np.concatenate([clusters[i] for i in pick])
        out[b] = statistic(idx)
    return out[np.isfinite(out)]


def _fast_auc(y: np.ndarray, s: np.ndarray) -> float:
    m = int(y.sum())
    n = len(y) - m
    if m == 0 or n == 0:
        return math.nan
    ranks = stats.rankdata(s)
    return float((ranks[y == 1].sum() - m * (m + 1) / 2) / (m * n))


def auroc_bootstrap(
    y: Labels, s: Scores, groups: Sequence[Any] | None = None,
    n_boot: int = 2000, seed: int = 0, confidence: float = 0.95,
) -> AUC:
    """AUROC with a percentile interval from the patient-level bootstrap."""
    y_arr, s_arr = label_score_arrays(y, s)
    value = float(roc_auc_score(y_arr, s_arr))
    reps = bootstrap_statistic(lambda i: _fast_auc(y_arr[i], s_arr[i]), len(y_arr), groups, n_boot, seed)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(reps, [alpha, 1 - alpha])
    return AUC(value, float(reps.std(ddof=1)), float(low), float(high), f"patient bootstrap ({len(reps)})")


# --------------------------------------------------------------------------- operating points

@dataclass(frozen=True)
class OperatingPoint:
    """Confusion counts at one threshold, with Wilson intervals and workload saved.

    ``workload_all``: share of the films called likely normal (what a reading list could
    deprioritise); ``workload_normals``: share of normal films called likely normal (equal to
    specificity when every film was assessable)."""

    threshold: float
    tp: int
    fn: int
    tn: int
    fp: int
    sensitivity: Proportion
    specificity: Proportion
    ppv: Proportion
    npv: Proportion
    workload_all: Proportion
    workload_normals: Proportion

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"threshold": self.threshold, "tp": self.tp, "fn": self.fn, "tn": self.tn, "fp": self.fp}
        for name in ("sensitivity", "specificity", "ppv", "npv", "workload_all", "workload_normals"):
            out[name] = getattr(self, name).to_dict()
        return out


def confusion_at(y: Labels, s: Scores, threshold: float) -> tuple[int, int, int, int]:
    """(tp, fn, tn, fp) with suspicious = score >= threshold."""
    y_arr, s_arr = label_score_arrays(y, s)
    flagged = decide_many(s_arr, threshold)
    tp = int(np.sum(flagged & (y_arr == 1)))
    fn = int(np.sum(~flagged & (y_arr == 1)))
    tn = int(np.sum(~flagged & (y_arr == 0)))
    fp = int(np.sum(flagged & (y_arr == 0)))
    return tp, fn, tn, fp


def operating_point(
    y: Labels, s: Scores, threshold: float,
    not_assessable: tuple[int, int] = (0, 0), confidence: float = 0.95,
) -> OperatingPoint:
    """Metrics at one threshold. ``not_assessable`` = (normal, abnormal) films the gate
    refused: they are never called likely normal, so they count in the workload denominators
    but not in sensitivity/specificity (those describe the assessed films)."""
    tp, fn, tn, fp = confusion_at(y, s, threshold)
    na_normal, na_abnormal = not_assessable
    total = tp + fn + tn + fp + na_normal + na_abnormal
    return OperatingPoint(
        threshold=float(threshold), tp=tp, fn=fn, tn=tn, fp=fp,
        sensitivity=proportion(tp, tp + fn, confidence),
        specificity=proportion(tn, tn + fp, confidence),
        ppv=proportion(tp, tp + fp, confidence),
        npv=proportion(tn, tn + fn, confidence),
        workload_all=proportion(tn + fn, total, confidence),
        workload_normals=proportion(tn, tn + fp + na_normal, confidence),
    )


def threshold_sweep(
    y: Labels, s: Scores, targets: Sequence[float] = SENSITIVITY_TARGETS,
    not_assessable: tuple[int, int] = (0, 0), confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """For each sensitivity target, the threshold that reaches it on these films and what it
    costs in specificity. Descriptive: thresholds picked here are fitted to these films."""
    label_score_arrays(y, s)
    rows = []
    for target in targets:
        t = threshold_for_sensitivity(y, s, target)
        rows.append({"target": float(target), **operating_point(y, s, t, not_assessable, confidence).to_dict()})
    return rows


# --------------------------------------------------------------------------- calibration

def reliability_bins(y: Labels, s: Scores, n_bins: int = 10) -> list[dict[str, Any]]:
    """Equal-width score bins: count, mean score, observed abnormal rate with Wilson CI."""
    y_arr, s_arr = label_score_arrays(y, s)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(s_arr, edges[1:-1], right=False), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        sel = which == b
        n = int(sel.sum())
        k = int(y_arr[sel].sum())
        obs = proportion(k, n)
        bins.append({
            "low": float(edges[b]), "high": float(edges[b + 1]), "n": n,
            "mean_score": float(s_arr[sel].mean()) if n else None,
            "observed": obs.to_dict(),
        })
    return bins


def expected_calibration_error(y: Labels, s: Scores, n_bins: int = 10) -> float:
    """ECE: film-weighted mean |observed rate - mean score| over equal-width bins."""
    y_arr, _ = label_score_arrays(y, s)
    total = len(y_arr)
    if total == 0:
        return math.nan
    err = 0.0
    for b in reliability_bins(y, s, n_bins):
        if b["n"]:
            err += b["n"] / total * abs(b["observed"]["value"] - b["mean_score"])
    return float(err)


# --------------------------------------------------------------------------- paired comparison

def compare_auroc_delong(y: Labels, s_a: Scores, s_b: Scores,
                         confidence: float = 0.95) -> dict[str, float]:
    """Paired DeLong test of AUROC(a) - AUROC(b) on the same films."""
    auc, cov = delong_covariance(y, s_a, s_b)
    diff = float(auc[0] - auc[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    z = _z(confidence)
    p = float(2 * stats.norm.sf(abs(diff) / se)) if se > 0 else (1.0 if diff == 0 else 0.0)
    return {"auroc_a": float(auc[0]), "auroc_b": float(auc[1]), "difference": diff, "se": se,
            "low": diff - z * se, "high": diff + z * se, "p_value": p}


def workload_at_sensitivity(y: np.ndarray, s: np.ndarray, target: float, n_unassessed: int = 0) -> float:
    """Share of films called likely normal when the threshold is set to reach ``target``
    sensitivity on these films."""
    t = threshold_for_sensitivity(y, s, target)
    return float(np.sum(~decide_many(s, t)) / (len(s) + n_unassessed))


def compare_models(
    y: Labels, s_a: Scores, s_b: Scores, groups: Sequence[Any] | None = None,
    targets: Sequence[float] = (0.95, 0.98, 0.99), n_boot: int = 2000, seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Two models on the same films: AUROC difference (paired DeLong and patient bootstrap)
    and difference in workload saved at equal sensitivity (each model's threshold set to reach
    the target on these films, re-chosen inside every bootstrap replicate)."""
    y_arr, a = label_score_arrays(y, s_a)
    _, b = label_score_arrays(y, s_b)
    alpha = (1 - confidence) / 2
    delong = compare_auroc_delong(y_arr, a, b, confidence)

    def auc_diff(i: np.ndarray) -> float:
        return _fast_auc(y_arr[i], a[i]) - _fast_auc(y_arr[i], b[i])

    reps = bootstrap_statistic(auc_diff, len(y_arr), groups, n_boot, seed)
    boot_ci = [float(q) for q in np.quantile(reps, [alpha, 1 - alpha])]
    workload = []
    for target in targets:
        wa = workload_at_sensitivity(y_arr, a, target)
        wb = workload_at_sensitivity(y_arr, b, target)

        def wl_diff(i: np.ndarray, target: float = target) -> float:
            yi = y_arr[i]
            if yi.sum() == 0:
                return math.nan
            return workload_at_sensitivity(yi, a[i], target) - workload_at_sensitivity(yi, b[i], target)

        reps_w = bootstrap_statistic(wl_diff, len(y_arr), groups, n_boot, seed + 1)
        lo, hi = np.quantile(reps_w, [alpha, 1 - alpha])
        workload.append({"target_sensitivity": float(target), "workload_a": wa, "workload_b": wb,
                         "difference": wa - wb, "low": float(lo), "high": float(hi)})
    return {"n_films": int(len(y_arr)), "auroc_delong": delong,
            "auroc_bootstrap": {"difference": delong["difference"], "low": boot_ci[0], "high": boot_ci[1],
                                "replicates": int(len(reps))},
            "workload_at_equal_sensitivity": workload}
