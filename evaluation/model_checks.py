"""Does the model read lungs? Three checks beside AUROC, shared by training and the reports.

* **Twin test**: the same film through two image pipelines (``twin`` column of the shared
  manifest: rsna-pneumonia JPEG vs rsna-normals 224 px PNG) must get the same score:
  mean |score difference| and the share of pairs with the same decision.
* **Source probe**: how well the model's penultimate features (globally pooled last feature
  map) tell which source a *normal* film came from. Normals only, so the label cannot help;
  multinomial logistic regression, stratified 5-fold cross-validation; balanced accuracy
  (chance = 1 / number of sources) and macro one-vs-rest AUROC (chance 0.5). Lower is better:
  features that know the pipeline let a classifier use it.
* **Pointing game** (Zhang et al., ECCV 2016): the heatmap's maximum falls inside a
  radiologist's box (RSNA "Lung Opacity" boxes), compared with a fixed guess (the point most
  often inside a training film's box: a data-driven "centre of the lungs"); paired by film,
  exact McNemar test. A heatmap is worth showing only when it beats the guess.

All inputs are NumPy arrays; nothing here imports torch.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from cxr_triage.contract.decision import decide_many
from cxr_triage.evaluation.metrics import proportion
from cxr_triage.inference.scorer import onnx_session

Box = tuple[float, float, float, float]  # x, y, width, height in pixels of the film


# ---------------------------------------------------------------- twins

def twin_agreement(scores_a: npt.ArrayLike, scores_b: npt.ArrayLike, threshold: float) -> dict[str, Any]:
    """Pairs of scores of the same films through two pipelines -> {pairs, mean_abs_diff,
    median_abs_diff, max_abs_diff, decision_agreement, a_suspicious, b_suspicious} at
    ``threshold`` (score >= threshold: suspicious, as :func:`cxr_triage.contract.decision.decide`)."""
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"twin score arrays differ in shape: {a.shape} vs {b.shape}")
    if a.size == 0:
        return {"pairs": 0}
    d = np.abs(a - b)
    da, db = decide_many(a, threshold), decide_many(b, threshold)
    return {"pairs": int(a.size), "mean_abs_diff": round(float(d.mean()), 4),
            "median_abs_diff": round(float(np.median(d)), 4), "max_abs_diff": round(float(d.max()), 4),
            "decision_agreement": round(float((da == db).mean()), 4),
            "a_suspicious": int(da.sum()), "b_suspicious": int(db.sum()), "threshold": threshold}


# ---------------------------------------------------------------- source probe

def source_probe(features: np.ndarray, sources: Sequence[str], seed: int = 0, folds: int = 5) -> dict[str, Any]:
    """Features (N, C) of normal films and their sources -> cross-validated balanced accuracy
    and macro one-vs-rest AUROC of a logistic-regression source classifier (lower = the
    features know less about the pipeline). Sources with fewer than ``folds`` films are dropped."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    src = np.asarray(sources)
    names, counts = np.unique(src, return_counts=True)
    keep_names = names[counts >= folds]
    keep = np.isin(src, keep_names)
    x, src = x[keep], src[keep]
    if len(keep_names) < 2:
        return {"sources": {str(n): int(c) for n, c in zip(names, counts)}, "note": "needs two sources"}
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced"))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    proba = cross_val_predict(clf, x, src, cv=cv, method="predict_proba")
    classes = np.array(sorted(keep_names))
    pred = classes[proba.argmax(1)]
    auroc = roc_auc_score(src, proba, multi_class="ovr", average="macro", labels=classes) if len(classes) > 2 \
        else roc_auc_score(src == classes[1], proba[:, 1])
    return {"films": int(len(src)), "sources": {str(n): int((src == n).sum()) for n in classes},
            "balanced_accuracy": round(float(balanced_accuracy_score(src, pred)), 4),
            "chance_balanced_accuracy": round(1.0 / len(classes), 4),
            "macro_auroc": round(float(auroc), 4), "method": f"logistic regression (C=0.1), stratified {folds}-fold CV"}


# ---------------------------------------------------------------- boxes and the pointing game

def read_boxes(path: str | Path) -> dict[str, list[Box]]:
    """``file,x,y,width,height`` CSV (one row per box; ``file`` relative to the CSV's folder,
    as in ``rsna-pneumonia/boxes.csv``) -> {resolved absolute film path: [(x, y, w, h), ...]}."""
    path = Path(path)
    out: dict[str, list[Box]] = defaultdict(list)
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            out[str((path.parent / row["file"]).resolve())].append(
                (float(row["x"]), float(row["y"]), float(row["width"]), float(row["height"])))
    return dict(out)


def box_prior(boxes: Sequence[Sequence[Box]], sides: Sequence[float], grid: int) -> np.ndarray:
    """(grid, grid): the share of films whose boxes cover each cell's centre (films squashed
    to a unit square, as :func:`cxr_triage.contract.preprocessing.preprocess` does)."""
    prior = np.zeros((grid, grid))
    centres = (np.arange(grid) + 0.5) / grid
    for film_boxes, side in zip(boxes, sides):
        covered = np.zeros((grid, grid), dtype=bool)
        for x, y, w, h in film_boxes:
            cx = (centres >= x / side) & (centres <= (x + w) / side)
            cy = (centres >= y / side) & (centres <= (y + h) / side)
            covered |= cy[:, None] & cx[None, :]
        prior += covered
    return prior / max(1, len(boxes))


def lung_field_mask(prior: np.ndarray, level: float = 0.1) -> np.ndarray:
    """(h, w) float32 0/1: cells whose box-prior reaches ``level`` x its maximum, dilated by one
    cell (a lung-field prior learnt from where radiologists drew opacity boxes)."""
    if prior.max() <= 0:
        return np.ones_like(prior, dtype=np.float32)
    m = prior >= level * prior.max()
    d = m.copy()
    d[1:, :] |= m[:-1, :]
    d[:-1, :] |= m[1:, :]
    d[:, 1:] |= m[:, :-1]
    d[:, :-1] |= m[:, 1:]
    return d.astype(np.float32)


def _inside(point: tuple[float, float], film_boxes: Sequence[Box]) -> bool:
    px, py = point
    return any(x <= px <= x + w and y <= py <= y + h for x, y, w, h in film_boxes)


def pointing_hits(heatmaps: np.ndarray, boxes: Sequence[Sequence[Box]], sides: Sequence[float]) -> np.ndarray:
    """(N,) bool: the centre of each heatmap's (N, h, w) maximum cell, mapped to the film's
    pixels (side ``sides[i]``, square films), lies inside one of the film's boxes."""
    hm = np.asarray(heatmaps, dtype=np.float64)
    n, h, w = hm.shape
    hits = np.zeros(n, dtype=bool)
    for i in range(n):
        r, c = np.unravel_index(int(np.argmax(hm[i])), (h, w))
        hits[i] = _inside(((c + 0.5) / w * sides[i], (r + 0.5) / h * sides[i]), boxes[i])
    return hits


def fixed_point_hits(point: tuple[float, float], boxes: Sequence[Sequence[Box]], sides: Sequence[float]) -> np.ndarray:
    """(N,) bool: a fixed point (x, y in [0, 1] of the film) inside each film's boxes."""
    return np.array([_inside((point[0] * s, point[1] * s), b) for b, s in zip(boxes, sides)], dtype=bool)


def best_fixed_point(prior: np.ndarray) -> tuple[float, float]:
    """(x, y) in [0, 1]: the centre of the prior's most often covered cell."""
    h, w = prior.shape
    r, c = np.unravel_index(int(np.argmax(prior)), prior.shape)
    return ((c + 0.5) / w, (r + 0.5) / h)


def pointing_game(heatmaps: np.ndarray, boxes: Sequence[Sequence[Box]], sides: Sequence[float],
                  guess: tuple[float, float]) -> dict[str, Any]:
    """The heatmaps' hit rate against the fixed ``guess``'s on the same films, with Wilson
    intervals and an exact McNemar test of the paired difference; ``beats_guess`` when the
    heatmap hits more often and p < 0.05."""
    from scipy.stats import binomtest

    hm = pointing_hits(heatmaps, boxes, sides)
    fx = fixed_point_hits(guess, boxes, sides)
    n = int(hm.size)
    only_hm, only_fx = int((hm & ~fx).sum()), int((~hm & fx).sum())
    p = binomtest(only_hm, only_hm + only_fx, 0.5).pvalue if only_hm + only_fx else 1.0
    a, b = proportion(int(hm.sum()), n), proportion(int(fx.sum()), n)
    return {"films": n,
            "heatmap_hit_rate": {"value": round(a.value, 4) if n else None, "ci95": [round(a.low, 4), round(a.high, 4)],
                                 "k": int(hm.sum())},
            "fixed_guess_hit_rate": {"value": round(b.value, 4) if n else None, "ci95": [round(b.low, 4), round(b.high, 4)],
                                     "k": int(fx.sum())},
            "guess_point": [round(guess[0], 4), round(guess[1], 4)],
            "discordant": {"heatmap_only": only_hm, "guess_only": only_fx},
            "mcnemar_exact_p": round(float(p), 4),
            "beats_guess": bool(n and hm.sum() > fx.sum() and p < 0.05)}


def boxes_for(files: Sequence[str], boxes: Mapping[str, list[Box]]) -> tuple[list[int], list[list[Box]]]:
    """Indices of ``files`` that have boxes, and their boxes."""
    idx = [i for i, f in enumerate(files) if f in boxes]
    return idx, [boxes[files[i]] for i in idx]


# ---------------------------------------------------------------- features of an ONNX model

def onnx_feature_model(model_path: str | Path) -> bytes:
    """The ONNX model with its last feature map (the input of the class-activation map's
    Einsum, (N, C, h, w)) added as an output named ``features``: serialised bytes."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path))
    einsum = [n for n in model.graph.node if n.op_type == "Einsum"]
    if not einsum:
        raise ValueError(f"{model_path}: no class-activation-map Einsum: cannot find the feature map")
    feat = einsum[0].input[0]
    model.graph.node.append(helper.make_node("ReduceMean", [feat], ["features"], axes=[2, 3], keepdims=0)
                            if model.opset_import[0].version < 18 else
                            helper.make_node("ReduceMean", [feat, "features_axes"], ["features"], keepdims=0))
    if model.opset_import[0].version >= 18:
        model.graph.initializer.append(helper.make_tensor("features_axes", TensorProto.INT64, [2], [2, 3]))
    model.graph.output.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, None))
    return bytes(model.SerializeToString())


def onnx_features(model_path: str | Path, inputs: np.ndarray, batch: int = 32, threads: int = 2) -> np.ndarray:
    """(N, C) penultimate features of the model for preprocessed ``inputs`` (N, 1, S, S)."""
    sess = onnx_session(onnx_feature_model(model_path), threads)
    name = sess.get_inputs()[0].name
    out = [sess.run(["features"], {name: np.asarray(inputs[i:i + batch], dtype=np.float32)})[0]
           for i in range(0, len(inputs), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def wilson_text(d: Mapping[str, Any]) -> str:
    """``"62.1% (55.0-68.7)"`` from a {value, ci95} dict."""
    v = d.get("value")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    lo, hi = d.get("ci95", [None, None])
    return f"{100 * v:.1f}% ({100 * lo:.1f}-{100 * hi:.1f})"
