"""Temperature scaling and operating thresholds, both fitted on the validation split only.

Temperature T rescales logits (score = sigmoid(logit / T)) to minimise validation negative
log-likelihood; with a shift (score = sigmoid((logit + shift) / T), Platt scaling) it also
absorbs the prior difference between the class-balanced training loss and the validation
mix. Both are monotone: calibration changes, the ranking (AUROC) does not.
A threshold for target sensitivity s is the highest score threshold that still flags at least
a fraction s of validation abnormal films as suspicious (score >= threshold).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit

from cxr_triage.contract.decision import decide_many
from cxr_triage.contract.nodule_point import MIN_FLAG_SENSITIVITY  # the flag rule, one definition (consumers state it)
from cxr_triage.contract.operating_points import operating_point_name, threshold_for_sensitivity

TARGET_SENSITIVITIES = (0.95, 0.98, 0.99)
#: operating points of the nodule/mass output (its flag is an added finding, not the triage decision)
NODULE_SENSITIVITIES = (0.8, 0.9, 0.95)
#: nodule/mass operating points by the share of validation normals they may flag; the default
#: is the 0.15 one, and its flag is shown only when it catches MIN_FLAG_SENSITIVITY of
#: validation Nodule/Mass films (otherwise the score is shown without a flag)
NODULE_FLAG_RATES = (0.1, 0.15, 0.2)
DEFAULT_FLAG_RATE = 0.15


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """T in [0.05, 20] minimising the binary NLL of sigmoid(logits / T)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        return float(-np.mean(y * log_expit(s) + (1 - y) * log_expit(-s)))

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(res.x))


def fit_temperature_and_shift(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(T, shift) minimising the NLL of sigmoid((logit + shift) / T): temperature scaling with
    a bias (Platt scaling), for when the training class balance differs from validation's."""
    from scipy.optimize import minimize

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)

    def nll(p: np.ndarray) -> float:
        s = z / math.exp(p[0]) + p[1]
        return float(-np.mean(y * log_expit(s) + (1 - y) * log_expit(-s)))

    t0 = math.log(fit_temperature(z, y))
    res = minimize(nll, x0=np.array([t0, 0.0]), method="L-BFGS-B",
                   bounds=[(math.log(0.05), math.log(100.0)), (-20.0, 20.0)])
    t = float(math.exp(res.x[0]))
    return t, float(res.x[1] * t)


def calibrated(logits: np.ndarray, temperature: float, shift: float = 0.0) -> np.ndarray:
    return expit((np.asarray(logits, dtype=np.float64) + shift) / temperature)


def stored_threshold(threshold: float) -> float:
    """A threshold as it is stored in a model file (float32): nudged down to the next float32
    below it, so the film whose score set it stays suspicious after the float32 round trip."""
    return float(np.nextafter(np.float32(threshold), np.float32(0)))


def operating_points(scores: np.ndarray, labels: np.ndarray,
                     targets: tuple[float, ...] = TARGET_SENSITIVITIES) -> dict[str, float]:
    """{"sens_0.95": t, ...} chosen on (validation) scores, ready to store in the model file:
    the shared rule (:func:`cxr_triage.contract.operating_points.threshold_for_sensitivity`),
    then :func:`stored_threshold`."""
    return {operating_point_name(t): stored_threshold(threshold_for_sensitivity(labels, scores, t))
            for t in targets}


def coinciding_points(thresholds: dict[str, float], n_abnormal: int,
                      targets: tuple[float, ...] = TARGET_SENSITIVITIES) -> str | None:
    """A warning line when operating points of ``targets`` got the same threshold on
    ``n_abnormal`` abnormal validation films (the abnormal film at rank ceil(target x n) sets
    each: with few films the ranks coincide, or tied scores do); None when all differ."""
    by_t: dict[float, list[float]] = {}
    for t in targets:
        if operating_point_name(t) in thresholds:
            by_t.setdefault(thresholds[operating_point_name(t)], []).append(t)
    same = [(thr, ts) for thr, ts in by_t.items() if len(ts) > 1]
    if not same:
        return None
    parts = [f"{', '.join(operating_point_name(t) for t in ts)} share threshold {thr:.4f} (the abnormal film "
             f"ranked {', '.join(str(max(1, math.ceil(t * n_abnormal - 1e-9))) for t in ts)} of {n_abnormal} "
             "sets it)" for thr, ts in same]
    return (f"{'; '.join(parts)}: with {n_abnormal} abnormal validation films these operating points coincide; "
            "more abnormal validation films separate them")


def rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity (= share of normals called likely normal) at a threshold."""
    y = np.asarray(labels)
    flagged = decide_many(scores, threshold)
    pos, neg = y == 1, y == 0
    return {
        "sensitivity": float(flagged[pos].mean()) if pos.any() else float("nan"),
        "specificity": float((~flagged[neg]).mean()) if neg.any() else float("nan"),
        "likely_normal_share": float((~flagged).mean()),
    }


__all__ = ["fit_temperature", "fit_temperature_and_shift", "calibrated", "stored_threshold", "operating_points",
           "coinciding_points", "rates", "TARGET_SENSITIVITIES", "NODULE_SENSITIVITIES", "NODULE_FLAG_RATES", "DEFAULT_FLAG_RATE",
           "MIN_FLAG_SENSITIVITY", "expit"]
