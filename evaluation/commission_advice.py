"""What the commissioning rule demands of a site's films, and what the site can do when the
result would mislead.

The rule (:mod:`cxr_triage.evaluation.commission`) needs the lower end of the two-sided
confidence interval of sensitivity (Clopper–Pearson by default) to reach the target. With m
abnormal films and k of them missed the bound is the ``(1 - confidence) / 2`` quantile of
Beta(m - k, k + 1) (exact) or the Wilson lower end; at 0.98 / 95% Clopper–Pearson, 183 abnormal
films allow no miss and 277 allow one. A set that allows no miss forces the threshold down to
the lowest-scoring abnormal film, which may sit below every normal film: then the node calls
every study suspicious and saves no work. :func:`demands` says this in numbers before anything
is written; :func:`refusal_lines` gives the site its options.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from cxr_triage.evaluation import metrics, thresholds

#: A threshold that sets aside less than this share of the normal films "flags (nearly)
#: everything": commissioning refuses it unless told ``--accept-no-savings``.
MIN_SET_ASIDE = 0.05
#: Targets tried as the "another target" option (each still under the lower-bound rule).
OTHER_TARGETS = (0.97, 0.95, 0.90)


@dataclass(frozen=True)
class RuleDemands:
    """The rule's arithmetic for ``n_abnormal`` films (bounds are lower ends of the two-sided
    ``confidence`` interval by ``method``)."""

    n_abnormal: int
    target: float
    confidence: float
    method: str
    bound_none_missed: float        # lower bound when every abnormal film is found
    bound_one_missed: float | None  # ... when one is missed (None with fewer than 2 films)
    misses_allowed: int | None      # most misses that still meet the target, None if even 0 fails
    needed_for_none_missed: int     # fewest abnormal films for which finding all meets the target
    needed_for_one_miss: int        # fewest abnormal films for which one miss meets the target

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """Plain sentences for the console (no trailing punctuation decisions left to callers)."""
        m, tgt = self.n_abnormal, f"{self.target:g}"
        head = (f"the rule: lower {self.confidence:.0%} bound of sensitivity ({_method_name(self.method)}) >= {tgt}; "
                f"with {m} abnormal films, finding all {m} gives a bound of {self.bound_none_missed:.4f}")
        if self.bound_one_missed is not None:
            head += f", missing 1 gives {self.bound_one_missed:.4f}"
        if self.misses_allowed is None:
            allowed = (f"no threshold can meet it: at least {self.needed_for_none_missed} abnormal films "
                       "are needed even if none is missed")
        elif self.misses_allowed == 0:
            allowed = (f"so every one of the {m} abnormal films must be called suspicious (no miss allowed); "
                       f"allowing one miss needs at least {self.needed_for_one_miss} abnormal films")
        else:
            allowed = f"so at most {self.misses_allowed} of the {m} abnormal films may be missed"
        return [head, allowed]


def _method_name(method: str) -> str:
    return "Clopper-Pearson" if method == "exact" else "Wilson"


def demands(n_abnormal: int, target: float, confidence: float = 0.95, method: str = "exact") -> RuleDemands:
    """The rule's arithmetic for ``n_abnormal`` abnormal (assessable) films.

    Raises ValueError for a target outside (0, 1) or an unknown ``method``."""
    m = int(n_abnormal)
    found = thresholds.fewest_found_meeting(m, target, confidence, method) if m else 0
    return RuleDemands(
        n_abnormal=m, target=float(target), confidence=float(confidence), method=method,
        bound_none_missed=metrics.lower_bound(m, m, confidence, method) if m else 0.0,
        bound_one_missed=metrics.lower_bound(m - 1, m, confidence, method) if m > 1 else None,
        misses_allowed=(m - found) if found else None,
        needed_for_none_missed=thresholds.min_abnormal_for_lower_bound(target, confidence, method, 0),
        needed_for_one_miss=thresholds.min_abnormal_for_lower_bound(target, confidence, method, 1),
    )


def other_target_lines(y: np.ndarray, s: np.ndarray, confidence: float, method: str,
                       targets: Sequence[float] = OTHER_TARGETS) -> list[str]:
    """For each lower target: the threshold the same rule gives on these films and the share of
    normal films it would call likely normal (``y`` 0/1 labels, ``s`` scores, assessable films)."""
    out = []
    n_normal = int(np.sum(y == 0))
    for t in targets:
        c = thresholds.select_operating_point(y, s, t, "lower_bound", confidence, method)
        if not c.feasible or c.threshold is None:
            out.append(f"--target {t:g}: not reachable either ({c.note})")
            continue
        out.append(f"--target {t:g}: threshold {c.threshold:.6f} sets aside {c.tn}/{n_normal} normal films "
                   f"({c.tn / max(n_normal, 1):.0%}), lower bound {c.sensitivity_low:.4f}")
    return out


def no_savings_words(tn: int, n_normal: int, min_set_aside: float = MIN_SET_ASIDE) -> str:
    """Why setting aside ``tn`` of ``n_normal`` normal films (fewer than ``min_set_aside`` of
    them) is refused, and what it means for the node, by the numbers: "(nearly) every study
    suspicious" only below :data:`MIN_SET_ASIDE`."""
    share = tn / max(n_normal, 1)
    what = f"less than the {min_set_aside:.0%} asked (--min-set-aside)"
    if share < MIN_SET_ASIDE:
        return f"{what}: the node would call (nearly) every study suspicious and save (nearly) no work"
    return f"{what}: the node would still call {n_normal - tn} of {n_normal} normal studies suspicious"


def refusal_lines(d: RuleDemands, y: np.ndarray, s: np.ndarray, set_aside: tuple[int, int] | None,
                  min_set_aside: float = MIN_SET_ASIDE) -> list[str]:
    """Why the result would mislead and the site's options, one sentence a line.

    ``set_aside`` = (normal films called likely normal, normal films) at the chosen threshold,
    or None when no threshold meets the rule; ``min_set_aside``: the share asked for."""
    lines = d.lines()
    if set_aside is not None:
        tn, n = set_aside
        lines.append(f"at the only threshold that meets it, {tn} of {n} normal films ({tn / max(n, 1):.0%}) are "
                     f"called likely normal, {no_savings_words(tn, n, min_set_aside)}")
    lines.append("options:")
    lines.append(f"  more abnormal films: from {d.needed_for_one_miss} on, one may be missed (from "
                 f"{d.needed_for_none_missed}, none); add them to the manifest and re-run")
    lines += [f"  another target: {x}" for x in other_target_lines(y, s, d.confidence, d.method)]
    lines.append("  shadow mode first: serve with [node] shadow_mode = true, collect the final reads, and "
                 "commission on the shadow run's SRs (--srs) with the films it adds (docs/commissioning.md)")
    if set_aside is not None:
        lines.append(f"  --accept-no-savings writes this threshold anyway (it sets aside {set_aside[0]} of "
                     f"{set_aside[1]} normal films)")
    return lines


def saves_work(tn: int, n_normal: int, min_set_aside: float = MIN_SET_ASIDE) -> bool:
    """True when the threshold calls at least ``min_set_aside`` of the normal films likely normal."""
    return n_normal > 0 and tn / n_normal >= min_set_aside
