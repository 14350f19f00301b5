"""Operating points: choose thresholds on one set of films, evaluate them on another, and
always know which films a threshold was fitted to.

A threshold picked on the films it is then reported on flatters sensitivity (the k-th abnormal
score is chosen to make the target true on exactly those films). Every :class:`ThresholdSet`
therefore carries the identity of the films it was chosen on, and :func:`provenance` compares
that with the films being reported, so the report can say so loudly.

:func:`select_operating_point` is the reusable rule (also for site commissioning): the highest
threshold whose sensitivity, or the lower confidence bound of it, meets a target.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypedDict

import numpy as np

from cxr_triage.contract.operating_points import operating_point_name, threshold_for_sensitivity
from cxr_triage.evaluation import metrics
from cxr_triage.inference.site_threshold import load_site_threshold

SCHEMA = "cxr-triage-thresholds/1"
RULES = ("point", "lower_bound")


#: ``0.98 -> "sens_0.98"``: the naming used in model metadata (the contract's one rule).
op_name = operating_point_name


def min_abnormal_for_lower_bound(target: float, confidence: float = 0.95, method: str = "wilson",
                                 misses: int = 0) -> int:
    """Fewest abnormal films for which finding all but ``misses`` of them still has a lower
    bound >= target: below this, no threshold can satisfy the lower-bound rule with that many
    misses (e.g. 189 for 0.98, Wilson 95%, no miss; 183 and 311 with Clopper-Pearson for no
    miss and one miss). The bound of (n - misses) of n rises with n, hence the bisection."""
    if not 0 < target < 1:
        raise ValueError("target must be in (0, 1)")
    if misses < 0:
        raise ValueError("misses must be >= 0")

    def meets(n: int) -> bool:
        return n > misses and metrics.lower_bound(n - misses, n, confidence, method) >= target

    n = misses + 1
    while not meets(n):
        n = n * 2 if n < 4096 else n + 4096
        if n > 10_000_000:
            raise ValueError(f"target {target} is unreachable")
    return _first_meeting(meets, n // 2, n)


def _first_meeting(meets: Callable[[int], bool], lo: int, hi: int) -> int:
    """Bisection for the smallest k in (lo, hi] with ``meets(k)``, where ``meets`` is monotone
    (False up to some k, True from there on), ``meets(hi)`` holds and ``meets(lo)`` does not."""
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        if meets(mid):
            hi = mid
        else:
            lo = mid
    return hi


def fewest_found_meeting(m: int, target: float, confidence: float, method: str) -> int:
    """Smallest k in 1..m whose lower bound (k of m found) is >= target, 0 if none.

    Binary search: the lower bound rises monotonically with k (Wilson and exact), so this is
    the k a scan from 1 upwards would stop at, in O(log m) interval evaluations."""
    if metrics.lower_bound(m, m, confidence, method) < target:
        return 0
    return _first_meeting(lambda k: metrics.lower_bound(k, m, confidence, method) >= target, 0, m)


@dataclass
class OperatingPointChoice:
    """One chosen operating point and the evidence for it (counts, interval, rule)."""

    name: str
    target: float
    rule: str                  # "point" or "lower_bound"
    feasible: bool
    threshold: float | None    # None when infeasible
    tp: int
    n_abnormal: int
    tn: int
    n_normal: int
    sensitivity: float | None
    sensitivity_low: float | None
    sensitivity_high: float | None
    specificity: float | None
    confidence: float
    interval: str
    min_abnormal_needed: int | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _ChoiceBase(TypedDict):
    """The :class:`OperatingPointChoice` fields every outcome of one selection shares."""

    name: str
    target: float
    rule: str
    n_abnormal: int
    n_normal: int
    confidence: float
    interval: str


def select_operating_point(
    y: metrics.Labels, s: metrics.Scores, target: float, rule: str = "point",
    confidence: float = 0.95, method: str = "wilson",
) -> OperatingPointChoice:
    """The highest threshold (score of the k-th highest-scoring abnormal film) such that

    * ``rule="point"``: sensitivity on these films >= target;
    * ``rule="lower_bound"``: the lower end of the two-sided ``confidence`` interval of
      sensitivity (Wilson or exact) >= target. Infeasible when too few abnormal films: then
      ``threshold`` is None and ``min_abnormal_needed`` says how many would be needed.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r} ({'|'.join(RULES)})")
    y_arr = np.asarray(y, dtype=int)
    s_arr = np.asarray(s, dtype=float)
    pos = np.sort(s_arr[y_arr == 1])[::-1]
    neg = s_arr[y_arr == 0]
    m, n = len(pos), len(neg)
    name = op_name(target)
    base = _ChoiceBase(name=name, target=float(target), rule=rule, n_abnormal=m, n_normal=n,
                       confidence=confidence, interval=method)
    if m == 0:
        return OperatingPointChoice(**base, feasible=False, threshold=None, tp=0, tn=0, sensitivity=None,
                                    sensitivity_low=None, sensitivity_high=None, specificity=None,
                                    note="no abnormal films")
    if rule == "point":
        threshold = threshold_for_sensitivity(y_arr, s_arr, target)
    else:
        k = fewest_found_meeting(m, target, confidence, method)
        if k == 0:
            need = min_abnormal_for_lower_bound(target, confidence, method)
            low = metrics.lower_bound(m, m, confidence, method)
            return OperatingPointChoice(
                **base, feasible=False, threshold=None, tp=m, tn=0, sensitivity=1.0,
                sensitivity_low=low, sensitivity_high=1.0, specificity=None, min_abnormal_needed=need,
                note=(f"even finding all {m} abnormal films gives a lower bound of {low:.4f} < {target}; "
                      f"at least {need} abnormal films are needed"),
            )
        threshold = float(pos[k - 1])
    tp, _, tn, _ = metrics.confusion_at(y_arr, s_arr, threshold)
    sens = metrics.proportion(tp, m, confidence)
    low = metrics.lower_bound(tp, m, confidence, method)
    return OperatingPointChoice(
        **base, feasible=True, threshold=threshold, tp=tp, tn=tn, sensitivity=sens.value,
        sensitivity_low=low, sensitivity_high=sens.high, specificity=tn / n if n else None,
    )


@dataclass
class ThresholdSet:
    """Named thresholds plus where they came from.

    ``chosen_on_keys`` are the film keys (content hashes, see sources.film_key) of the films the
    thresholds were fitted to; None means unknown (e.g. a model's stored thresholds whose
    validation films were not supplied)."""

    thresholds: dict[str, float]
    default: str
    source: str
    rule: str = "point"
    chosen_on: str | None = None
    chosen_on_keys: list[str] | None = None
    evidence: list[dict[str, Any]] = field(default_factory=list)
    created: str = ""
    model_sha256: str | None = None   # set when the thresholds belong to one model file

    def threshold(self, name: str | None = None) -> tuple[str, float]:
        key = name or self.default
        if key not in self.thresholds:
            raise KeyError(f"no operating point {key!r} (have: {', '.join(sorted(self.thresholds))})")
        return key, float(self.thresholds[key])

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> "ThresholdSet":
        data = json.loads(Path(path).read_text())
        if data.get("schema") != SCHEMA:
            raise ValueError(f"{path}: not a threshold file ({SCHEMA})")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def choose_thresholds(
    y: Sequence[int], s: Sequence[float], keys: Sequence[str], targets: Sequence[float] = (0.95, 0.98, 0.99),
    rule: str = "point", default_target: float = 0.98, chosen_on: str = "", confidence: float = 0.95,
    method: str = "wilson",
) -> ThresholdSet:
    """Fit one threshold per sensitivity target on these films and remember which films they were.
    Infeasible lower-bound targets are kept in the evidence but get no threshold."""
    choices = [select_operating_point(y, s, t, rule, confidence, method) for t in targets]
    thresholds = {c.name: c.threshold for c in choices if c.feasible and c.threshold is not None}
    if not thresholds:
        raise ValueError("no target could be met on these films: " + "; ".join(c.note for c in choices))
    default = op_name(default_target)
    if default not in thresholds:
        default = sorted(thresholds)[0]
    return ThresholdSet(
        thresholds=thresholds, default=default, rule=rule,
        source=f"chosen on {chosen_on or 'a labelled set'} ({rule} rule)",
        chosen_on=chosen_on or None, chosen_on_keys=sorted(set(keys)),
        evidence=[c.to_dict() for c in choices],
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def from_model_metadata(meta: Any, chosen_on: str | None = None, chosen_on_keys: Iterable[str] | None = None) -> ThresholdSet:
    """The thresholds stored in a model (chosen by its trainer, normally on a validation split).
    Pass the validation films' keys when known so overlap with the reported films is checked."""
    return ThresholdSet(
        thresholds={k: float(v) for k, v in meta.thresholds.items()},
        default=meta.default_operating_point,
        source=f"model metadata of {meta.name} {meta.version}",
        rule="model",
        chosen_on=chosen_on or "the model's validation split (as recorded by its trainer)",
        chosen_on_keys=sorted(set(chosen_on_keys)) if chosen_on_keys is not None else None,
    )


def provenance(ts: ThresholdSet, reported_keys: Sequence[str], reported_name: str = "the reported films") -> dict[str, Any]:
    """Where the thresholds came from and whether they were fitted to the reported films.

    ``picked_on_reported_films`` is True when any reported film was among the films the
    thresholds were chosen on; ``checked`` is False when the tuning films are unknown."""
    reported = set(reported_keys)
    out: dict[str, Any] = {"source": ts.source, "rule": ts.rule, "chosen_on": ts.chosen_on,
                           "reported_on": reported_name, "n_reported": len(reported)}
    if ts.chosen_on_keys is None:
        out.update(checked=False, overlap=None, picked_on_reported_films=False,
                   note=("the films these thresholds were chosen on are not known here: independence "
                         "from the reported films could not be checked"))
        return out
    overlap = reported & set(ts.chosen_on_keys)
    out.update(checked=True, overlap=len(overlap), n_chosen_on=len(ts.chosen_on_keys),
               picked_on_reported_films=bool(overlap))
    if overlap:
        share = len(overlap) / max(len(reported), 1)
        out["warning"] = (
            f"THRESHOLDS WERE PICKED ON THE REPORTED FILMS: {len(overlap)} of {len(reported)} reported films "
            f"({share:.0%}) were used to choose them. Sensitivity and specificity at these operating points "
            f"are optimistic and are not an estimate of performance on new films."
        )
    else:
        out["note"] = "thresholds were chosen on films disjoint from the reported films"
    return out


def load_threshold_file(path: Path) -> ThresholdSet:
    """A threshold file from ``evaluate --save-thresholds`` or a site threshold file from
    ``cxr-triage commission`` (one operating point; the films it was chosen on are known only
    by the data hash it records, so overlap cannot be checked film by film)."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict) and data.get("schema") == SCHEMA:
        return ThresholdSet.load(path)
    site = load_site_threshold(path)
    return ThresholdSet(
        thresholds={site.operating_point: site.threshold}, default=site.operating_point,
        source=(f"site threshold file {Path(path).name} (site {site.site}, model {site.model_name} "
                f"{site.model_version}, sha256 {site.model_sha256[:12]})"),
        rule=f"lower_bound ({site.ci_method}, {site.confidence:g})",
        chosen_on=f"the site's commissioning films ({site.created or 'date unknown'})",
        evidence=[site.evidence] if site.evidence else [], created=site.created,
        model_sha256=site.model_sha256,
    )
