"""Evaluation metrics against scikit-learn, published values and hand-computed small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_score, recall_score, roc_auc_score, roc_curve

from cxr_triage.evaluation import metrics as M
from cxr_triage.evaluation import subgroups


def _synthetic(n: int = 400, seed: int = 0, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
    if ties:
        s = np.round(s, 1)
    return y, s


# ----------------------------------------------------------------------------- Wilson

@pytest.mark.parametrize("k,n,low,high", [
    # Newcombe (1998) Stat Med 17:857, Table I, method 3 (Wilson score, no continuity correction)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombe_1998(k: int, n: int, low: float, high: float) -> None:
    lo, hi = M.wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=6e-5)
    assert hi == pytest.approx(high, abs=6e-5)


def test_wilson_closed_form_and_empty() -> None:
    k, n, z = 49, 50, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert M.wilson_interval(k, n) == pytest.approx((centre - half, centre + half), rel=1e-9)
    assert all(math.isnan(v) for v in M.wilson_interval(0, 0))
    assert math.isnan(M.proportion(0, 0).value)


def test_lower_bound_methods() -> None:
    # all-found lower bounds: Wilson n/(n+z^2); exact (alpha/2)^(1/n)
    n, z = 189, 1.959963984540054
    assert M.lower_bound(n, n, method="wilson") == pytest.approx(n / (n + z * z), rel=1e-9)
    assert M.lower_bound(n, n, method="exact") == pytest.approx(0.025 ** (1 / n), rel=1e-9)
    with pytest.raises(ValueError):
        M.lower_bound(1, 2, method="normal")


# ----------------------------------------------------------------------------- AUROC

def test_delong_hand_computed_small_case() -> None:
    # abnormal 0.8, 0.6, 0.4; normal 0.5, 0.3. V10 = (1, 1, 0.5), V01 = (2/3, 1)
    # AUC = 5/6; var = var(V10)/3 + var(V01)/2 = (1/12)/3 + (1/18)/2 = 1/18
    auc = M.auroc_delong([1, 1, 1, 0, 0], [0.8, 0.6, 0.4, 0.5, 0.3])
    assert auc.value == pytest.approx(5 / 6)
    assert auc.se == pytest.approx(math.sqrt(1 / 18))
    assert auc.high == 1.0  # clipped


def _delong_direct(y: np.ndarray, s_list: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) straight from the definition, O(m*n) per model."""
    pos = [s[y == 1] for s in s_list]
    neg = [s[y == 0] for s in s_list]
    v10, v01 = [], []
    for p, q in zip(pos, neg):
        psi = (p[:, None] > q[None, :]) + 0.5 * (p[:, None] == q[None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    v10, v01 = np.array(v10), np.array(v01)
    cov = np.atleast_2d(np.cov(v10)) / v10.shape[1] + np.atleast_2d(np.cov(v01)) / v01.shape[1]
    return v10.mean(axis=1), cov


@pytest.mark.parametrize("ties", [False, True])
def test_delong_matches_sklearn_and_direct_definition(ties: bool) -> None:
    y, s = _synthetic(300, seed=3, ties=ties)
    rng = np.random.default_rng(9)
    s2 = np.clip(s + rng.normal(0, 0.15, len(s)), 0, 1)
    if ties:
        s2 = np.round(s2, 1)
    auc, cov = M.delong_covariance(y, s, s2)
    assert auc[0] == pytest.approx(roc_auc_score(y, s))
    assert auc[1] == pytest.approx(roc_auc_score(y, s2))
    ref_auc, ref_cov = _delong_direct(y, [s, s2])
    assert auc == pytest.approx(ref_auc)
    assert cov == pytest.approx(ref_cov)


def test_delong_on_hanley_mcneil_1982_rating_example() -> None:
    """Hanley & McNeil (1982) Radiology 143:29, Table 1: 58 normal, 51 abnormal on a 5-point
    scale; published AUC 0.893, SE 0.032 (their exponential approximation; DeLong's
    nonparametric SE is a different but asymptotically equivalent estimator)."""
    normal, abnormal = [33, 6, 6, 11, 2], [3, 2, 2, 11, 33]
    y = [0] * sum(normal) + [1] * sum(abnormal)
    s = [r for r, c in enumerate(normal, 1) for _ in range(c)] + [r for r, c in enumerate(abnormal, 1) for _ in range(c)]
    auc = M.auroc_delong(y, s)
    assert round(auc.value, 3) == 0.893
    assert auc.se == pytest.approx(0.032, abs=0.003)


def test_delong_agrees_with_bootstrap() -> None:
    y, s = _synthetic(600, seed=5)
    d = M.auroc_delong(y, s)
    b = M.auroc_bootstrap(y, s, n_boot=1500, seed=1)
    assert b.value == pytest.approx(d.value)
    assert b.se == pytest.approx(d.se, rel=0.12)
    assert b.low == pytest.approx(d.low, abs=0.01)
    assert b.high == pytest.approx(d.high, abs=0.01)


def test_patient_bootstrap_resamples_patients_not_films() -> None:
    """Every film duplicated under the same patient adds no information: the patient-level
    bootstrap keeps the original width, a film-level bootstrap would shrink it by ~sqrt(2)."""
    y, s = _synthetic(300, seed=11)
    single = M.auroc_bootstrap(y, s, groups=None, n_boot=800, seed=2)
    y2, s2 = np.repeat(y, 2), np.repeat(s, 2)
    patients = np.repeat(np.arange(len(y)), 2)
    clustered = M.auroc_bootstrap(y2, s2, groups=patients, n_boot=800, seed=2)
    naive = M.auroc_bootstrap(y2, s2, groups=None, n_boot=800, seed=2)
    assert clustered.se == pytest.approx(single.se, rel=0.15)
    assert naive.se < 0.85 * clustered.se


def test_auroc_needs_both_classes() -> None:
    with pytest.raises(ValueError):
        M.auroc_delong([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        M.auroc_delong([1, 0], [0.1, float("nan")])


# ----------------------------------------------------------------------------- operating points

def test_operating_point_matches_sklearn() -> None:
    y, s = _synthetic(500, seed=7)
    t = 0.45
    pred = (s >= t).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    op = M.operating_point(y, s, t)
    assert (op.tp, op.fn, op.tn, op.fp) == (tp, fn, tn, fp)
    assert op.sensitivity.value == pytest.approx(recall_score(y, pred))
    assert op.specificity.value == pytest.approx(recall_score(1 - y, 1 - pred))
    assert op.ppv.value == pytest.approx(precision_score(y, pred))
    assert op.npv.value == pytest.approx(precision_score(1 - y, 1 - pred))
    assert op.workload_all.value == pytest.approx(np.mean(s < t))
    assert op.workload_normals.value == pytest.approx(op.specificity.value)
    assert (op.sensitivity.low, op.sensitivity.high) == pytest.approx(M.wilson_interval(tp, tp + fn))


def test_not_assessable_films_count_in_workload_only() -> None:
    y = [1, 1, 0, 0]
    s = [0.9, 0.2, 0.1, 0.8]
    op = M.operating_point(y, s, 0.5, not_assessable=(2, 1))
    assert op.sensitivity.value == 0.5 and op.sensitivity.n == 2
    assert op.workload_all.k == 2 and op.workload_all.n == 7     # 2 likely normal of 7 films
    assert op.workload_normals.k == 1 and op.workload_normals.n == 4


def test_threshold_for_sensitivity_hand_case() -> None:
    # abnormal scores 0.9 0.8 0.7 0.6 0.5 ... 0.0 (10 films): 0.9 sensitivity -> 9th = 0.1
    pos = np.round(np.arange(9, -1, -1) / 10, 1)
    y = np.r_[np.ones(10, int), np.zeros(3, int)]
    s = np.r_[pos, [0.05, 0.5, 0.95]]
    assert M.threshold_for_sensitivity(y, s, 0.90) == pytest.approx(0.1)
    assert M.threshold_for_sensitivity(y, s, 0.50) == pytest.approx(0.5)
    assert M.threshold_for_sensitivity(y, s, 0.999) == pytest.approx(0.0)


def test_sweep_is_best_specificity_on_the_roc_curve() -> None:
    y, s = _synthetic(400, seed=13)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    for row in M.threshold_sweep(y, s):
        assert row["sensitivity"]["value"] >= row["target"] - 1e-12
        best_spec = max(1 - f for f, t in zip(fpr, tpr) if t >= row["target"] - 1e-12)
        assert row["specificity"]["value"] == pytest.approx(best_spec)


# ----------------------------------------------------------------------------- calibration

def test_ece_hand_case() -> None:
    # bin [0.1,0.2): scores 0.15 x4, 1 abnormal -> |0.25-0.15| = 0.10
    # bin [0.8,0.9): scores 0.85 x4, 4 abnormal -> |1.0-0.85| = 0.15
    y = [1, 0, 0, 0, 1, 1, 1, 1]
    s = [0.15] * 4 + [0.85] * 4
    assert M.expected_calibration_error(y, s) == pytest.approx(0.5 * 0.10 + 0.5 * 0.15)
    bins = M.reliability_bins(y, s)
    assert [b["n"] for b in bins] == [0, 4, 0, 0, 0, 0, 0, 0, 4, 0]
    assert M.expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0


def test_perfectly_calibrated_scores_have_small_ece() -> None:
    rng = np.random.default_rng(4)
    s = rng.random(20000)
    y = (rng.random(20000) < s).astype(int)
    assert M.expected_calibration_error(y, s) < 0.02


# ----------------------------------------------------------------------------- comparison, subgroups

def test_paired_comparison() -> None:
    y, s = _synthetic(400, seed=21)
    rng = np.random.default_rng(22)
    worse = np.clip(s + rng.normal(0, 0.25, len(s)), 0, 1)
    ab = M.compare_models(y, s, worse, n_boot=400, seed=3)
    ba = M.compare_auroc_delong(y, worse, s)
    d = ab["auroc_delong"]
    assert d["difference"] == pytest.approx(roc_auc_score(y, s) - roc_auc_score(y, worse))
    assert ba["difference"] == pytest.approx(-d["difference"]) and ba["p_value"] == pytest.approx(d["p_value"])
    assert d["low"] > 0 and d["p_value"] < 0.05       # the noisier model is worse, detectably
    boot = ab["auroc_bootstrap"]
    assert boot["low"] == pytest.approx(d["low"], abs=0.015) and boot["high"] == pytest.approx(d["high"], abs=0.015)
    for w in ab["workload_at_equal_sensitivity"]:
        assert w["difference"] == pytest.approx(w["workload_a"] - w["workload_b"])
        assert w["low"] <= w["difference"] <= w["high"]
        ta = M.threshold_for_sensitivity(y, s, w["target_sensitivity"])
        assert w["workload_a"] == pytest.approx(np.mean(s < ta))
    same = M.compare_auroc_delong(y, s, s)
    assert same["difference"] == 0 and same["p_value"] == 1.0


def test_subgroups_add_up() -> None:
    y, s = _synthetic(300, seed=8)
    groups = np.where(np.arange(300) % 3 == 0, "AP", "PA")
    rows = subgroups.subgroup_metrics(y, s, groups, 0.5)
    assert [r["value"] for r in rows] == ["AP", "PA"]
    assert sum(r["n"] for r in rows) == 300
    assert sum(r["sensitivity"]["k"] for r in rows) == M.operating_point(y, s, 0.5).tp
    for r in rows:
        sel = groups == r["value"]
        assert r["auroc"]["value"] == pytest.approx(roc_auc_score(y[sel], s[sel]))
    assert subgroups.age_band(15) == "<16" and subgroups.age_band(45) == "40-59" and subgroups.age_band(None) == "unknown"
