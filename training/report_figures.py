"""The figures of the test report: counts, AUROC with a patient-level bootstrap CI and, per
operating point, sensitivity and the share of normals called likely normal (Wilson CIs); per
source, per view, per source x view; the nodule/mass output; the paired comparison of two
models on the same films.

Statistics are :mod:`cxr_triage.evaluation.metrics`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from cxr_triage.contract.decision import decide_many
from cxr_triage.evaluation import metrics
from cxr_triage.training.manifest import Entry
from cxr_triage.training.report_scoring import ReportError
from cxr_triage.training.targets import nodule_known, nodule_normals, nodule_truth, nodule_vs_normal

SCHEMA = "cxr-triage-test-report/2"


def _p(prop: metrics.Proportion) -> dict[str, Any]:
    v = None if math.isnan(prop.value) else round(prop.value, 4)
    ci = [None, None] if math.isnan(prop.value) else [round(prop.low, 4), round(prop.high, 4)]
    return {"value": v, "ci95": ci, "k": prop.k, "n": prop.n}


def _auroc(y: np.ndarray, s: np.ndarray, groups: Sequence[str], n_boot: int, seed: int) -> dict[str, Any]:
    if y.size == 0 or y.min() == y.max():
        return {"value": None, "ci95": [None, None], "method": "needs normal and abnormal films"}
    auc = metrics.auroc_bootstrap(y, s, groups, n_boot=n_boot, seed=seed)
    return {"value": round(auc.value, 4), "ci95": [round(auc.low, 4), round(auc.high, 4)], "method": auc.method}


def figures(scores: np.ndarray, entries: Sequence[Entry], thresholds: dict[str, float],
            n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Counts, AUROC (patient bootstrap CI) and per operating point: sensitivity, share of
    normals called likely normal (= specificity), share of all films called likely normal and
    Nodule/Mass sensitivity, each with a Wilson CI. ``scores`` (N,) in entry order."""
    y = np.array([e.label for e in entries], dtype=int)
    s = np.asarray(scores, dtype=np.float64)
    nodule = np.array([bool(e.nodule_or_mass) and e.label == 1 for e in entries], dtype=bool)
    groups = [e.patient_id or e.file for e in entries]
    res: dict[str, Any] = {"films": len(entries), "abnormal": int(y.sum()), "normal": int((1 - y).sum()),
                           "patients": len(set(groups)), "nodule_or_mass": int(nodule.sum()),
                           "auroc": _auroc(y, s, groups, n_boot, seed)}
    ops = {}
    for name, t in sorted(thresholds.items()):
        flagged = decide_many(s, t) if len(s) else np.zeros(0, dtype=bool)
        likely_normal = metrics.proportion(int((~flagged[y == 0]).sum()), int((y == 0).sum()))
        ops[name] = {
            "threshold": float(t),
            "sensitivity": _p(metrics.proportion(int(flagged[y == 1].sum()), int((y == 1).sum()))),
            "normals_called_likely_normal": _p(likely_normal),
            "specificity": _p(likely_normal),
            "all_films_likely_normal": _p(metrics.proportion(int((~flagged).sum()), len(y))),
            "nodule_or_mass_sensitivity": _p(metrics.proportion(int(flagged[nodule].sum()), int(nodule.sum()))),
        }
    res["operating_points"] = ops
    return res


def nodule_figures(nodule_scores: np.ndarray, entries: Sequence[Entry], thresholds: dict[str, float],
                   n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The nodule/mass output on films whose nodule/mass status is known: AUROC of
    Nodule/Mass films against normal films (the lung-cancer question) and against every other
    known film, and at each nodule/mass operating point its sensitivity on Nodule/Mass films
    and the share of normal films it flags."""
    s = np.asarray(nodule_scores, dtype=np.float64)
    known = nodule_known(entries)
    truth = nodule_truth(entries).astype(bool)
    pos = known & truth
    normal = nodule_normals(entries)
    other = known & ~truth
    groups = [e.patient_id or e.file for e in entries]

    def auc(neg: np.ndarray) -> dict[str, Any]:
        idx = np.flatnonzero(pos | neg)
        return _auroc(truth[idx].astype(int), s[idx], [groups[i] for i in idx], n_boot, seed)

    res: dict[str, Any] = {"nodule_or_mass_films": int(pos.sum()), "normal_films": int(normal.sum()),
                           "other_known_films": int(other.sum()),
                           "auroc_vs_normals": auc(normal), "auroc_vs_all_other": auc(other)}
    res["operating_points"] = {
        name: {"threshold": float(t),
               "sensitivity": _p(metrics.proportion(int(decide_many(s[pos], t).sum()), int(pos.sum()))),
               "normals_flagged": _p(metrics.proportion(int(decide_many(s[normal], t).sum()), int(normal.sum())))}
        for name, t in sorted(thresholds.items())}
    return res


def group_by(entries: Sequence[Entry], key: Any) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        out.setdefault(key(e), []).append(i)
    return dict(sorted(out.items()))


def _source(e: Entry) -> str:
    return e.source or "unknown"


def _view(e: Entry) -> str:
    return (e.view or "unknown").upper()


def build_report(scores: np.ndarray, entries: Sequence[Entry], thresholds: dict[str, float], *, model: str,
                 split: str, manifest: str, headline_sources: Sequence[str] | None = None,
                 compare: np.ndarray | None = None, compare_model: str = "",
                 compare_thresholds: dict[str, float] | None = None, n_boot: int = 2000,
                 seed: int = 0) -> dict[str, Any]:
    """Every number of the test report as a dict (the JSON; HTML and terminal are made from it).

    ``scores`` (N,) and ``compare`` (N,) are in ``entries`` order; ``headline_sources``
    default: every source of ``entries``."""
    entries = list(entries)
    s = np.asarray(scores, dtype=np.float64)
    sources = sorted({e.source or "unknown" for e in entries})
    head_src = list(headline_sources) if headline_sources else sources
    head = [i for i, e in enumerate(entries) if (e.source or "unknown") in head_src]
    if not head:
        raise ReportError(f"no {split} films from the headline source(s) {', '.join(head_src)} "
                          f"(the split has {', '.join(sources)})")

    def fig(idx: Sequence[int], sc: np.ndarray = s, thr: dict[str, float] = thresholds) -> dict[str, Any]:
        return figures(sc[list(idx)], [entries[i] for i in idx], thr, n_boot, seed)

    rep: dict[str, Any] = {
        "schema": SCHEMA, "model": model, "split": split, "manifest": manifest,
        "thresholds_from": "stored in the model (chosen on its validation split)"
                           + ("; site threshold from its commissioning file" if any(k.startswith("site:") for k in thresholds) else ""),
        "headline_sources": head_src, "sources": sources,
        "headline": fig(head),
        "by_source": {src: fig(idx) for src, idx in group_by(entries, _source).items()},
        "by_source_view": {},
    }
    # per view over the headline films (indices of the headline list mapped back)
    rep["by_view"] = {v: fig([head[j] for j in idx]) for v, idx in group_by([entries[i] for i in head], _view).items()}
    if len(sources) > 1:
        rep["by_source_view"] = {key: fig(idx) for key, idx in
                                 group_by(entries, lambda e: f"{e.source or 'unknown'} / {_view(e)}").items()}
    # Each source's normals against all headline abnormal films: equal values mean the model
    # tells normal from abnormal whatever pipeline made the normal film; a low value for one
    # source means its normals look "abnormal" to the model (the source was learned).
    y = np.array([e.label for e in entries])
    abn = [i for i in head if y[i] == 1]
    rep["normals_by_source_vs_headline_abnormal_auroc"] = {}
    for src in sources:
        norm = [i for i, e in enumerate(entries) if (e.source or "unknown") == src and e.label == 0]
        if norm and abn and len(sources) > 1:
            idx = abn + norm
            rep["normals_by_source_vs_headline_abnormal_auroc"][src] = _auroc(
                y[idx], s[idx], [entries[i].patient_id or entries[i].file for i in idx], n_boot, seed)
    rep["headline_normals_alone"] = fig([i for i in head if y[i] == 0])
    if compare is not None:
        rep["comparison"] = _comparison(entries, s, np.asarray(compare, dtype=np.float64), head, compare_model,
                                        compare_thresholds or {}, n_boot, seed)
    return rep


def paired_verdict(difference: float, low: float, other: str) -> str:
    """The plain verdict on a paired AUROC comparison (this model minus ``other``, e.g. "the init
    model"): better only when the paired bootstrap 95% CI's ``low`` end lies above 0. The one
    wording of ``train --init-from`` and ``report --compare``."""
    if low > 0:
        return f"better than {other} on these films (the CI lies above 0)"
    if difference == 0 and low == 0:
        return f"level with {other} on these films (the same AUROC in every resample)"
    if difference <= 0:
        return f"NOT better than {other} (the difference is not above 0): keep serving {other}"
    return (f"not shown to be better (the CI includes 0): keep serving {other} unless separate films "
            "show a gain")


def _paired(y: np.ndarray, a: np.ndarray, b: np.ndarray, groups: Sequence[str], idx: Sequence[int],
            targets: Sequence[float], n_boot: int, seed: int) -> dict[str, Any] | None:
    """Paired AUROC of scores ``a`` minus ``b`` over the films ``idx`` (labels ``y`` (N,)):
    DeLong and patient-level paired bootstrap; None unless both classes are present."""
    idx = list(idx)
    yy = y[idx]
    if yy.size == 0 or yy.min() == yy.max():
        return None
    out = metrics.compare_models(yy, a[idx], b[idx], [groups[i] for i in idx], targets=targets,
                                 n_boot=n_boot, seed=seed)
    boot = out["auroc_bootstrap"]
    return {"films": len(idx), "auroc_a": round(out["auroc_delong"]["auroc_a"], 4),
            "auroc_b": round(out["auroc_delong"]["auroc_b"], 4),
            "difference": round(boot["difference"], 4),
            "paired_bootstrap_ci95": [round(boot["low"], 4), round(boot["high"], 4)],
            "delong_p_value": round(out["auroc_delong"]["p_value"], 4),
            "workload_at_equal_sensitivity": out["workload_at_equal_sensitivity"]}


def _comparison(entries: list[Entry], a: np.ndarray, b: np.ndarray, head: list[int], name_b: str,
                thresholds_b: dict[str, float], n_boot: int, seed: int) -> dict[str, Any]:
    """Paired comparison on the same films: this model (a) minus the compared one (b)."""
    y = np.array([e.label for e in entries], dtype=int)
    groups = [e.patient_id or e.file for e in entries]

    def paired(idx: Sequence[int], targets: Sequence[float]) -> dict[str, Any] | None:
        return _paired(y, a, b, groups, idx, targets, n_boot, seed)

    headline = paired(head, (0.95, 0.98, 0.99))
    if headline is not None:
        headline["verdict"] = paired_verdict(headline["difference"], headline["paired_bootstrap_ci95"][0],
                                             "the compared model")
    return {
        "model_b": name_b,
        "note": "difference = this model minus the compared model, on the same films; CI: patient-level "
                "paired bootstrap; workload = share of films called likely normal with each model's "
                "threshold set to reach the target sensitivity on these films",
        "headline": headline,
        "by_source": {src: paired(idx, ()) for src, idx in group_by(entries, _source).items()},
        "model_b_headline": figures(b[head], [entries[i] for i in head], thresholds_b, n_boot, seed),
        "model_b_by_source": {src: figures(b[idx], [entries[i] for i in idx], thresholds_b, n_boot, seed)
                              for src, idx in group_by(entries, _source).items()},
    }


def nodule_block(nodule: np.ndarray, entries: Sequence[Entry], thresholds: dict[str, float],
                 headline_sources: Sequence[str], n_boot: int, seed: int) -> dict[str, Any]:
    """:func:`nodule_figures` of the nodule/mass scores (N,) over the headline sources' films
    and per source (the sources holding Nodule/Mass films)."""
    head = [i for i, e in enumerate(entries) if (e.source or "unknown") in headline_sources]
    block = {"headline": nodule_figures(nodule[head], [entries[i] for i in head], thresholds, n_boot, seed),
             "by_source": {}}
    for src, idx in group_by(entries, _source).items():
        f = nodule_figures(nodule[idx], [entries[i] for i in idx], thresholds, n_boot, seed)
        if f["nodule_or_mass_films"]:
            block["by_source"][src] = f
    return block


def nodule_comparison(a: np.ndarray, b: np.ndarray, entries: Sequence[Entry], headline_sources: Sequence[str],
                      n_boot: int, seed: int) -> dict[str, Any]:
    """Paired comparison of two models' nodule/mass scores (N,) on the same films, this model (a)
    minus the compared one (b): AUROC of Nodule/Mass films against normal films (status known,
    label conflicts left out), the headline sources pooled and per source."""
    truth = nodule_truth(entries)
    use = [int(i) for i in np.flatnonzero(nodule_vs_normal(entries))]
    groups = [e.patient_id or e.file for e in entries]
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    by_source = {src: [use[j] for j in idx] for src, idx in group_by([entries[i] for i in use], _source).items()}
    return {"note": "nodule/mass AUROC, Nodule/Mass films against normals; difference = this model minus the "
                    "compared model; CI: patient-level paired bootstrap",
            "headline": _paired(truth, a, b, groups, [i for i in use if _source(entries[i]) in headline_sources],
                                (), n_boot, seed),
            "by_source": {src: _paired(truth, a, b, groups, idx, (), n_boot, seed) for src, idx in by_source.items()}}
