"""One evaluation: ground truth + scores + thresholds -> every number of the report, as a dict.

The dict is the JSON report; the HTML report (report.py) is rendered from it alone, so a
JSON report can be re-rendered or compared later without the films.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np

from cxr_triage.contract.decision import decide_many
from cxr_triage.contract.result import Decision
from cxr_triage.evaluation import metrics, subgroups
from cxr_triage.evaluation.sources import Film, Scored
from cxr_triage.evaluation.thresholds import ThresholdSet, provenance

REPORT_SCHEMA = "cxr-triage-evaluation/1"
SIZE_COLUMNS = ("nodule_size_mm", "lesion_size_mm", "size_mm")
SUBTLETY_COLUMNS = ("subtlety", "nodule_subtlety")


def _size_band(value: str) -> str:
    try:
        mm = float(value)
    except (TypeError, ValueError):
        return "unknown"
    for upper, name in ((10, "<10 mm"), (20, "10-19 mm"), (30, "20-29 mm")):
        if mm < upper:
            return name
    return ">=30 mm"


SIZE_ORDER = ("<10 mm", "10-19 mm", "20-29 mm", ">=30 mm", "unknown")


def _sens_by(films: Sequence[Film], s: np.ndarray, values: Sequence[str], thresholds: dict[str, float],
             order: Sequence[str] = ()) -> list[dict[str, Any]]:
    rows = []
    vals = np.asarray(values)
    rank = {v: i for i, v in enumerate(order)}
    for value in sorted(set(values), key=lambda v: (rank.get(v, len(rank)), v)):
        sel = vals == value
        row: dict[str, Any] = {"value": value, "n": int(sel.sum())}
        for name, t in thresholds.items():
            k = int(np.sum(decide_many(s[sel], t)))
            row[name] = metrics.proportion(k, int(sel.sum())).to_dict()
        rows.append(row)
    return rows


def evaluate(
    films: Sequence[Film],
    scored: Sequence[Scored],
    thresholds: ThresholdSet,
    *,
    title: str = "cxr-triage evaluation",
    reported_name: str = "the reported films",
    inputs: dict[str, Any] | None = None,
    compare: Sequence[Scored] | None = None,
    compare_name: str = "model B",
    targets: Sequence[float] = metrics.SENSITIVITY_TARGETS,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Compute the whole report. Sensitivity, specificity and AUROC describe the assessed films;
    not-assessable films are counted separately and never count as likely normal."""
    if len(films) != len(scored):
        raise ValueError("one Scored per film is needed")
    warnings: list[str] = []
    prov = provenance(thresholds, [f.key for f in films], reported_name)
    if prov.get("warning"):
        warnings.append(prov["warning"])

    assessed = np.array([sc.assessable for sc in scored])
    y_all = np.array([f.label for f in films], dtype=int)
    y = y_all[assessed]
    s = np.array([sc.score for sc, a in zip(scored, assessed) if a], dtype=float)
    afilms = [f for f, a in zip(films, assessed) if a]
    groups = [f.patient_id for f in afilms]
    na_normal = int(np.sum(~assessed & (y_all == 0)))
    na_abnormal = int(np.sum(~assessed & (y_all == 1)))
    na_reasons: dict[str, int] = {}
    for sc in scored:
        if not sc.assessable:
            na_reasons[sc.reason or "unspecified"] = na_reasons.get(sc.reason or "unspecified", 0) + 1

    counts = {
        "films": len(films), "abnormal": int(y_all.sum()), "normal": int(len(y_all) - y_all.sum()),
        "patients": len({f.patient_id for f in films}), "assessed": int(assessed.sum()),
        "not_assessable": {"normal": na_normal, "abnormal": na_abnormal, "by_reason": na_reasons},
    }
    both = len(y) and 0 < y.sum() < len(y)
    if not both:
        warnings.append("the assessed films do not contain both normal and abnormal films: no AUROC")
    if len(set(groups)) < len(groups):
        note_groups = "several films per patient: the bootstrap resamples patients"
    else:
        note_groups = "one film per patient"

    primary_name, primary_t = thresholds.threshold()
    by_source = _by_source(films, scored, thresholds, primary_name, n_boot, seed)
    ops = []
    for name, t in sorted(thresholds.thresholds.items(), key=lambda kv: -kv[1]):
        op = metrics.operating_point(y, s, t, (na_normal, na_abnormal)).to_dict()
        ops.append({"name": name, "primary": name == primary_name, **op})

    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "title": title,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs or {},
        "thresholds": {"provenance": prov, "values": dict(thresholds.thresholds), "primary": primary_name,
                       "evidence": thresholds.evidence},
        "warnings": warnings,
        "counts": counts,
        # per source first (the headline): a pooled figure hides a model that learned which
        # source a film came from; everything below ("auroc", "operating_points", ...) is pooled
        "by_source": by_source,
        "pooled": {"label": _pooled_label(list(by_source)),
                   "sources": list(by_source)},
        "auroc": None,
        "operating_points": ops,
        "as_decided": _as_decided(y_all, scored, na_normal, na_abnormal),
        "sweep": metrics.threshold_sweep(y, s, targets, (na_normal, na_abnormal)) if y.sum() else [],
        "calibration": None,
        "subgroups": {},
        "nodule_mass": None,
        "missed": [],
        "films": [],
        "comparison": None,
        "notes": ["headline figures are per source (by_source); AUROC, operating points, sweep, calibration and "
                  "subgroups are pooled over every source and follow, labelled as pooled: a pooled figure hides a "
                  "model that learned which source a film came from",
                  note_groups,
                  "sensitivity, specificity, PPV, NPV and AUROC are over assessed films; workload saved is "
                  "over all films (not-assessable films are never called likely normal)",
                  "the threshold sweep picks each threshold on the reported films: it describes the trade-off, "
                  "it is not an independent estimate"],
    }
    if both:
        report["auroc"] = {
            "delong": metrics.auroc_delong(y, s).to_dict(),
            "bootstrap": metrics.auroc_bootstrap(y, s, groups, n_boot, seed).to_dict(),
        }
    if len(y):
        report["calibration"] = {"ece": metrics.expected_calibration_error(y, s),
                                 "bins": metrics.reliability_bins(y, s)}
        report["subgroups"] = _subgroups(afilms, y, s, primary_t)
        report["nodule_mass"] = _nodule_mass(afilms, s, thresholds.thresholds)
    report["missed"] = [
        {"file": f.file, "score": float(sc), "findings": f.findings, "nodule_or_mass": f.nodule_or_mass,
         "operating_point": primary_name}
        for f, sc in sorted(zip(afilms, s), key=lambda p: p[1]) if f.label == 1 and sc < primary_t
    ]
    report["films"] = [
        {"file": f.file, "label": f.label, "score": sc.score,
         "decision": sc.decision.value if sc.decision else None, "reason": sc.reason,
         "findings": f.findings}
        for f, sc in zip(films, scored)
    ]
    if compare is not None:
        report["comparison"] = _comparison(films, scored, compare, compare_name, groups_all=[f.patient_id for f in films],
                                           n_boot=n_boot, seed=seed)
    return report


def _pooled_label(names: Sequence[str]) -> str:
    """``pooled over 3 sources (a, b, c)``: how every pooled figure is labelled."""
    return f"pooled over {len(names)} source{'' if len(names) == 1 else 's'} ({', '.join(names)})"


def _by_source(films: Sequence[Film], scored: Sequence[Scored], thresholds: ThresholdSet, primary_name: str,
               n_boot: int, seed: int) -> dict[str, dict[str, Any]]:
    """The headline figures, one entry per data source (``Film.source``, read from the manifest's
    ``source`` column or its alias ``site``; "unknown" where empty).

    Sources with both classes come first (by name), then those with one class only. Each entry:
    ``films``, ``abnormal``, ``normal``, ``patients``, ``assessed`` (counts), ``not_assessable``
    ({normal, abnormal}), ``both_classes`` (bool), ``auroc`` (value, se, low, high, method: the
    patient-level bootstrap 95% CI over the assessed films; None unless the source's assessed
    films hold both classes) and ``operating_points``: {name: {threshold, primary, tp, fn, tn, fp,
    sensitivity, specificity, normals_called_likely_normal}} in the pooled table's order (highest
    threshold first), each proportion {k, n, value, low, high} with a Wilson 95% CI (value None
    when n == 0). Suspicious = :func:`decide_many` (score >= threshold). ``sensitivity`` and
    ``specificity`` are over assessed films; ``normals_called_likely_normal`` is over all of the
    source's normal films: a not-assessable normal film is never called likely normal (it equals
    the specificity when every normal film was assessed; the pooled ``workload_normals``)."""
    names = [f.source or "unknown" for f in films]
    out: dict[str, dict[str, Any]] = {}
    ordered = sorted(thresholds.thresholds.items(), key=lambda kv: -kv[1])
    for src in sorted(set(names)):
        idx = [i for i, n in enumerate(names) if n == src]
        y_all = np.array([films[i].label for i in idx], dtype=int)
        keep = [i for i in idx if scored[i].assessable]
        y = np.array([films[i].label for i in keep], dtype=int)
        s = np.array([scored[i].score for i in keep], dtype=float)
        na_norm = int(np.sum(y_all == 0) - np.sum(y == 0))
        na_abn = int(np.sum(y_all == 1) - np.sum(y == 1))
        both = bool(len(y) and 0 < y.sum() < len(y))
        entry: dict[str, Any] = {
            "films": len(idx), "abnormal": int(y_all.sum()), "normal": int(len(y_all) - y_all.sum()),
            "patients": len({films[i].patient_id for i in idx}), "assessed": len(keep),
            "not_assessable": {"normal": na_norm, "abnormal": na_abn}, "both_classes": both,
            "auroc": (metrics.auroc_bootstrap(y, s, [films[i].patient_id for i in keep], n_boot, seed).to_dict()
                      if both else None),
            "operating_points": {},
        }
        for name, t in ordered:
            suspicious = decide_many(s, t)
            tp, fn = int(np.sum(suspicious & (y == 1))), int(np.sum(~suspicious & (y == 1)))
            tn, fp = int(np.sum(~suspicious & (y == 0))), int(np.sum(suspicious & (y == 0)))
            entry["operating_points"][name] = {
                "threshold": float(t), "primary": name == primary_name, "tp": tp, "fn": fn, "tn": tn, "fp": fp,
                "sensitivity": metrics.proportion(tp, tp + fn).to_dict(),
                "specificity": metrics.proportion(tn, tn + fp).to_dict(),
                "normals_called_likely_normal": metrics.proportion(tn, tn + fp + na_norm).to_dict(),
            }
        out[src] = entry
    return dict(sorted(out.items(), key=lambda kv: not kv[1]["both_classes"]))


def _as_decided(y_all: np.ndarray, scored: Sequence[Scored], na_normal: int, na_abnormal: int) -> dict[str, Any] | None:
    """Metrics from the decisions the system itself made (SRs, node), when every film has one."""
    if not scored or any(sc.decision is None for sc in scored):
        return None
    keep = [sc.decision is not Decision.NOT_ASSESSABLE for sc in scored]
    y = y_all[np.array(keep)]
    flagged = np.array([1.0 if sc.decision is Decision.SUSPICIOUS else 0.0 for sc, k in zip(scored, keep) if k])
    ops = {sc.operating_point for sc in scored if sc.operating_point}
    return {"operating_points": sorted(ops),
            **metrics.operating_point(y, flagged, 0.5, (na_normal, na_abnormal)).to_dict()}


def _subgroups(films: Sequence[Film], y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, values, order in (
        ("sex", [f.sex or "unknown" for f in films], ()),
        ("age_band", [subgroups.age_band(f.age) for f in films], subgroups.AGE_BANDS),
        ("view", [f.view or "unknown" for f in films], ()),
        ("source", [f.source or "unknown" for f in films], ()),
    ):
        if len(set(values)) > 1 or values[0] != "unknown":
            out[name] = subgroups.subgroup_metrics(y, s, values, threshold, order=order)
    # Findings: a film with several findings counts for each; sensitivity only (all abnormal).
    by_finding: dict[str, list[int]] = {}
    for i, f in enumerate(films):
        for finding in f.finding_list:
            by_finding.setdefault(finding, []).append(i)
    if by_finding:
        rows = []
        for finding, idx in sorted(by_finding.items()):
            k = int(np.sum(decide_many(s[idx], threshold)))
            rows.append({"value": finding, "n": len(idx), "sensitivity": metrics.proportion(k, len(idx)).to_dict()})
        out["finding"] = rows
    return out


def _nodule_mass(films: Sequence[Film], s: np.ndarray, thresholds: dict[str, float]) -> dict[str, Any] | None:
    """Sensitivity on nodule/mass films (the lung-cancer proxy), by size and subtlety when known."""
    idx = [i for i, f in enumerate(films) if f.nodule_or_mass and f.label == 1]
    if not idx:
        return None
    sub = [films[i] for i in idx]
    ss = s[idx]
    out: dict[str, Any] = {"n": len(idx), "operating_points": {}}
    for name, t in thresholds.items():
        out["operating_points"][name] = metrics.proportion(int(np.sum(decide_many(ss, t))), len(idx)).to_dict()
    cols = set(sub[0].extra)
    size_col = next((c for c in SIZE_COLUMNS if c in cols), None)
    subtle_col = next((c for c in SUBTLETY_COLUMNS if c in cols), None)
    if size_col:
        out["by_size"] = _sens_by(sub, ss, [_size_band(f.extra.get(size_col, "")) for f in sub], thresholds,
                                 SIZE_ORDER)
    if subtle_col:
        out["by_subtlety"] = _sens_by(sub, ss, [f.extra.get(subtle_col, "") or "unknown" for f in sub], thresholds)
    return out


def _comparison(films: Sequence[Film], a: Sequence[Scored], b: Sequence[Scored], name_b: str,
                groups_all: list[str], n_boot: int, seed: int) -> dict[str, Any]:
    if len(b) != len(films):
        raise ValueError("the compared model needs a score for every film")
    keep = [x.assessable and z.assessable for x, z in zip(a, b)]
    y = np.array([f.label for f, k in zip(films, keep) if k], dtype=int)
    sa = np.array([x.score for x, k in zip(a, keep) if k], dtype=float)
    sb = np.array([z.score for z, k in zip(b, keep) if k], dtype=float)
    groups = [g for g, k in zip(groups_all, keep) if k]
    out = metrics.compare_models(y, sa, sb, groups, n_boot=n_boot, seed=seed)
    out.update(model_b=name_b, excluded_not_assessable=int(len(keep) - sum(keep)),
               note=("difference = this model minus model B; workload (share of all compared films called likely "
                     "normal) at equal sensitivity sets each model's threshold on these films"))
    return out

