"""Calibration of a trained network on its validation split: what ``model.pt`` stores.

Temperature + shift (Platt scaling, :mod:`cxr_triage.training.calibrate`), the operating
thresholds at the target sensitivities and the validation metrics, for the abnormal output
and, in a multitask network, the nodule/mass output.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cxr_triage.contract.operating_points import flag_rate_point_name, operating_point_name, threshold_for_flag_rate
from cxr_triage.evaluation.metrics import expected_calibration_error
from cxr_triage.training import calibrate
from cxr_triage.training.manifest import Entry
from cxr_triage.training.progress import say
from cxr_triage.training.targets import nodule_known, nodule_truth
from cxr_triage.training.train_config import TrainConfig
from cxr_triage.training.train_metrics import auroc, per_source


def calibration(cfg: TrainConfig, val_e: list[Entry], val_logits_all: np.ndarray, sel: np.ndarray,
                best_epoch: int) -> dict[str, Any]:
    """Temperature + shift, operating thresholds and validation metrics from validation logits
    (N, K) of the ``sel`` films: the fields ``model.pt`` stores. With a nodule/mass output
    (K > 1) it is calibrated and given operating points on the ``sel`` films whose
    nodule/mass status is known (:func:`nodule_calibration`)."""
    val_all = np.asarray(val_logits_all, dtype=np.float64).reshape(len(val_e), -1)
    val_logits = val_all[:, 0]
    y_val = np.array([e.label for e in val_e], dtype=np.float32)
    # The class-balanced loss trains as if both classes were equally common, so temperature
    # scaling gets a shift (Platt scaling) to match the validation mix; fitted on validation.
    z, y = val_logits[sel], y_val[sel]
    temperature, logit_shift = calibrate.fit_temperature_and_shift(z, y)
    ece_raw = expected_calibration_error(y, calibrate.calibrated(z, 1.0))
    shifted = val_logits + logit_shift
    scores = calibrate.calibrated(shifted[sel], temperature)
    thresholds = calibrate.operating_points(scores, y)
    same = calibrate.coinciding_points(thresholds, int(y.sum()))
    if same:
        say(f"WARNING: {same}")
    all_scores = calibrate.calibrated(shifted, temperature)
    metrics = {
        "split": "val",
        "films": int(sel.sum()),
        "abnormal": int(y.sum()),
        "auroc": auroc(scores, y),
        "ece_before": ece_raw,
        "ece_after": expected_calibration_error(y, scores),
        "operating_points": {k: calibrate.rates(scores, y, t) for k, t in thresholds.items()},
        "by_source": per_source(all_scores, val_e),
        "best_epoch": best_epoch,
    }
    out = {"temperature": temperature, "logit_shift": logit_shift, "thresholds": thresholds,
           "validation_metrics": metrics}
    if val_all.shape[1] > 1:
        out.update(nodule_calibration(val_e, val_all[:, 1], sel))
        metrics["nodule"] = out.get("nodule_metrics", {})
    return out


def nodule_calibration(val_e: list[Entry], logits: np.ndarray, sel: np.ndarray) -> dict[str, Any]:
    """Temperature + shift and operating points (targets :data:`calibrate.NODULE_SENSITIVITIES`,
    and the shares of validation normals :data:`calibrate.NODULE_FLAG_RATES`,
    :func:`flag_rate_points`) of the nodule/mass output (N,) on the ``sel`` validation films
    whose nodule/mass status is known. The default point flags at most
    :data:`calibrate.DEFAULT_FLAG_RATE` of the normals; ``nodule_flag_shown`` says whether it
    catches :data:`calibrate.MIN_FLAG_SENSITIVITY` of the Nodule/Mass films (else the
    worker shows the score without a flag). ``nodule_thresholds`` is empty (the output is not used) when those films hold no
    Nodule/Mass film or no film without one."""
    m = nodule_known(val_e) & sel
    y = nodule_truth(val_e)[m]
    z = np.asarray(logits, dtype=np.float64)[m]
    if y.size == 0 or y.min() == y.max():
        return {"nodule_temperature": 1.0, "nodule_shift": 0.0, "nodule_thresholds": {},
                "nodule_metrics": {"films": int(m.sum()), "positive": int(y.sum()),
                                   "note": "no Nodule/Mass films (or none without) in validation: output unused"}}
    t, shift = calibrate.fit_temperature_and_shift(z, y)
    scores = calibrate.calibrated(z + shift, t)
    thresholds = calibrate.operating_points(scores, y, calibrate.NODULE_SENSITIVITIES)
    normal = np.array([e.label == 0 for e in val_e])[m] & (y == 0)
    flag_points = flag_rate_points(scores, y, normal) if normal.any() else {}
    thresholds.update({k: v["threshold"] for k, v in flag_points.items()})
    default = flag_rate_point_name(calibrate.DEFAULT_FLAG_RATE) if flag_points else operating_point_name(0.9)
    shown = not flag_points or flag_points[default]["sensitivity"] >= calibrate.MIN_FLAG_SENSITIVITY
    metrics = {"films": int(m.sum()), "positive": int(y.sum()), "normals": int(normal.sum()),
               "auroc": auroc(scores, y), "auroc_vs_normals": auroc(scores[normal | (y == 1)], y[normal | (y == 1)]),
               "operating_points": {k: calibrate.rates(scores, y, v) for k, v in thresholds.items()},
               "flag_rate_points": flag_points, "default_operating_point": default, "flag_shown": bool(shown),
               "flag_rule": f"default point flags <= {calibrate.DEFAULT_FLAG_RATE:g} of validation normals; "
                            f"flag shown only if it catches >= {calibrate.MIN_FLAG_SENSITIVITY:g} of "
                            "validation Nodule/Mass films"}
    return {"nodule_temperature": t, "nodule_shift": shift, "nodule_thresholds": thresholds,
            "nodule_default_operating_point": default, "nodule_flag_shown": bool(shown), "nodule_metrics": metrics}


def flag_rate_points(scores: np.ndarray, truth: np.ndarray, normal: np.ndarray) -> dict[str, dict[str, float]]:
    """{"normals_0.15": {threshold, normals_flagged, sensitivity}, ...}: for each share of
    :data:`calibrate.NODULE_FLAG_RATES`, the threshold flagging at most that share of the
    ``normal`` films (N,) bool (validation normals), its share of normals flagged and its
    sensitivity on the Nodule/Mass films (``truth`` == 1) among ``scores`` (N,)."""
    out = {}
    for rate in calibrate.NODULE_FLAG_RATES:
        thr = threshold_for_flag_rate(scores[normal], rate)
        out[flag_rate_point_name(rate)] = {
            "threshold": thr, "normals_flagged": float((scores[normal] >= thr).mean()),
            "sensitivity": float((scores[truth == 1] >= thr).mean()) if (truth == 1).any() else float("nan")}
    return out
