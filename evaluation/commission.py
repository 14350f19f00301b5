"""Choose a site's operating point from its own labelled films, sensitivity first.

Rule: the threshold is the HIGHEST score threshold (most normal films called likely normal) at
which the lower end of the two-sided 95% confidence interval of sensitivity still meets the
target (default 0.98). Sensitivity measured on a few hundred abnormal films is uncertain;
demanding the lower bound rather than the point estimate makes a small commissioning set yield a
cautious, low threshold, and too small a set yield none, with the number of abnormal films needed.

Default interval: exact Clopper–Pearson (``method="exact"``): never below nominal coverage, the
conservative choice for a safety claim. Wilson (``method="wilson"``, the interval the evaluation
report uses elsewhere) is available. The rule itself is the evaluation harness's
:func:`cxr_triage.evaluation.thresholds.select_operating_point` (``rule="lower_bound"``); this
module adds the site binding (model SHA-256), the evidence and the drift baseline.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxr_triage import __version__
from cxr_triage.contract.decision import decide
from cxr_triage.contract.files import file_sha256, json_safe
from cxr_triage.contract.operating_points import operating_point_name
from cxr_triage.evaluation import commission_advice as advice
from cxr_triage.evaluation import metrics, thresholds
from cxr_triage.evaluation.drift import make_baseline
from cxr_triage.evaluation.sources import Film, Scored, model_info
from cxr_triage.inference.site_threshold import SiteThreshold

log = logging.getLogger(__name__)

CI_METHODS = ("exact", "wilson")   # exact = Clopper–Pearson
BASELINE_MAX_SCORES = 5000         # scores kept in the file as the drift reference


class InsufficientEvidence(ValueError):
    """No threshold can meet the rule on these films (e.g. too few abnormal films), or the one
    that meets it would save no work; the message says why, with the numbers and the options."""


class NoWorkSaved(InsufficientEvidence):
    """The rule is met only by a threshold that sets aside (nearly) no normal film."""


def _decision_at(sc: Scored, threshold: float) -> str:
    if not sc.assessable or sc.score is None:  # an assessable film always has a score
        return "not_assessable"
    return decide(float(sc.score), threshold).value


def table_sha256(films: Sequence[Film], scored: Sequence[Scored]) -> str:
    """SHA-256 of (film key, label, score) rows in a canonical order: identifies the evidence
    independent of file names and of how the scores were supplied."""
    h = hashlib.sha256()
    rows = sorted(
        (f.key, f.label, "" if s.score is None or not s.assessable else f"{float(s.score):.6f}")
        for f, s in zip(films, scored)
    )
    for key, label, score in rows:
        h.update(f"{key}\t{label}\t{score}\n".encode())
    return h.hexdigest()


def _model_identity(model_path: Path) -> dict[str, Any]:
    """Name, version and stored thresholds (evidence only: the SHA-256 is what binds)."""
    try:
        info = model_info(model_path)
        meta = info["metadata"]
        return {"name": meta.name, "version": meta.version, "thresholds": dict(meta.thresholds)}
    except Exception as exc:  # noqa: BLE001 - a model without metadata still gets a SHA-256
        log.warning("could not read model metadata", extra={"model": str(model_path), "error": str(exc)})
        return {"name": "", "version": "", "thresholds": {}}


def commission(
    films: Sequence[Film], scored: Sequence[Scored], model_path: str | Path, site: str,
    target: float = 0.98, confidence: float = 0.95, method: str = "exact",
    source_files: Sequence[str | Path] = (), also_targets: Sequence[float] = (0.95, 0.99),
    now: _dt.datetime | None = None, min_set_aside: float = advice.MIN_SET_ASIDE,
    accept_no_savings: bool = False,
) -> SiteThreshold:
    """Choose the site operating point on ``films`` (labels) and ``scored`` (the model's output
    on them, same order) and return the site threshold file's content (not yet written).

    Raises :class:`InsufficientEvidence` when the rule cannot be met, and :class:`NoWorkSaved`
    when the threshold that meets it calls fewer than ``min_set_aside`` of the normal films
    likely normal (unless ``accept_no_savings``); both messages give what the rule demands of
    this many abnormal films and the site's options (:mod:`commission_advice`)."""
    if method not in CI_METHODS:
        raise ValueError(f"method must be one of {', '.join(CI_METHODS)} (exact = Clopper-Pearson)")
    if len(films) != len(scored):
        raise ValueError(f"{len(films)} films but {len(scored)} scores")
    model_path = Path(model_path)
    pairs = [(f, s) for f, s in zip(films, scored) if s.assessable]
    y = np.array([f.label for f, _ in pairs], dtype=int)
    # every assessable film has a score: the None test only narrows the type
    s = np.array([float(sc.score) for _, sc in pairs if sc.score is not None], dtype=float)
    na = [(f, sc) for f, sc in zip(films, scored) if not sc.assessable]
    na_counts = (sum(1 for f, _ in na if f.label == 0), sum(1 for f, _ in na if f.label == 1))
    if not np.any(y == 0) or not np.any(y == 1):
        raise InsufficientEvidence(
            f"commissioning needs assessable normal and abnormal films: of {len(films)} film(s), "
            f"{int(np.sum(y == 0))} normal and {int(np.sum(y == 1))} abnormal are assessable "
            f"({len(na)} not assessable)")

    choice = thresholds.select_operating_point(y, s, target, "lower_bound", confidence, method)
    demands = advice.demands(int(np.sum(y == 1)), target, confidence, method)
    if not choice.feasible or choice.threshold is None:
        raise InsufficientEvidence("\n".join([f"no threshold meets the rule on these films: {choice.note}",
                                              *advice.refusal_lines(demands, y, s, None)]))
    n_normal = int(np.sum(y == 0))
    if not accept_no_savings and not advice.saves_work(choice.tn, n_normal, min_set_aside):
        raise NoWorkSaved("\n".join([
            f"refusing to write threshold {choice.threshold:.6f}: it sets aside {choice.tn} of {n_normal} "
            f"normal films (less than {min_set_aside:.0%})",
            *advice.refusal_lines(demands, y, s, (choice.tn, n_normal), min_set_aside)]))
    t = float(choice.threshold)
    at = metrics.operating_point(y, s, t, na_counts, confidence)
    model = _model_identity(model_path)

    reasons: dict[str, int] = {}
    for _, sc in na:
        reasons[sc.reason or "unknown"] = reasons.get(sc.reason or "unknown", 0) + 1

    def with_bound(threshold: float) -> dict[str, Any]:
        op = metrics.operating_point(y, s, threshold, na_counts, confidence).to_dict()
        low = metrics.lower_bound(op["tp"], op["tp"] + op["fn"], confidence, method)
        op["sensitivity_lower_bound"] = low
        op["meets_rule"] = bool(low >= target)
        return op

    evidence: dict[str, Any] = {
        "rule": (f"highest threshold whose sensitivity lower {confidence:.0%} bound "
                 f"({'Clopper-Pearson exact' if method == 'exact' else 'Wilson'}, two-sided interval) "
                 f">= {target:g}; score >= threshold is suspicious"),
        "n_films": len(films),
        "n_assessed": len(pairs),
        "n_abnormal": int(np.sum(y == 1)),
        "n_normal": int(np.sum(y == 0)),
        "not_assessable": {"n": len(na), "normal": na_counts[0], "abnormal": na_counts[1], "by_reason": reasons},
        "choice": choice.to_dict(),
        # Wilson intervals for everything but the rule's own bound (evaluation harness convention)
        "at_threshold": {**at.to_dict(), "sensitivity_lower_bound": choice.sensitivity_low,
                         "sensitivity_lower_bound_method": method},
        "min_abnormal_needed": thresholds.min_abnormal_for_lower_bound(target, confidence, method),
        "rule_demands": demands.to_dict(),
        "saves_work": advice.saves_work(choice.tn, n_normal, min_set_aside),
        "alternatives": {
            operating_point_name(a): thresholds.select_operating_point(y, s, a, "lower_bound", confidence, method).to_dict()
            for a in also_targets if a != target
        },
        # The model's own thresholds (chosen at training) measured on this site's films: what the
        # site would have run without commissioning.
        "model_thresholds_on_site": {k: with_bound(float(v)) for k, v in sorted(model["thresholds"].items())},
    }
    now = now or _dt.datetime.now(_dt.timezone.utc)
    baseline = make_baseline([sc.score for _, sc in pairs], [_decision_at(sc, t) for sc in scored])
    if len(baseline["scores"]) > BASELINE_MAX_SCORES:  # evenly spread quantiles, deterministic
        baseline["scores"] = [round(float(q), 6) for q in
                              np.quantile(baseline["scores"], np.linspace(0, 1, BASELINE_MAX_SCORES))]
    baseline["note"] = ("commissioning films (labelled, possibly enriched with abnormal films); a baseline "
                        "from a shadow-mode period ([monitoring] baseline_file) reflects the live mix better")
    site_thr = SiteThreshold(
        site=site, threshold=t, target_sensitivity=float(target), confidence=float(confidence),
        ci_method="clopper-pearson" if method == "exact" else "wilson",
        model_sha256=file_sha256(model_path), model_name=model["name"], model_version=model["version"],
        model_file=model_path.name, created=now.isoformat(timespec="seconds"),
        created_by=f"cxr-triage {__version__}", evidence=json_safe(evidence),
        source={"files": {str(p): file_sha256(p) for p in source_files},
                "table_sha256": table_sha256(films, scored)},
        baseline=baseline,
    )
    log.info("site operating point chosen", extra={
        "site": site, "threshold": t, "sensitivity_lower_bound": choice.sensitivity_low,
        "specificity": at.specificity.value, "n_abnormal": int(np.sum(y == 1))})
    return site_thr
