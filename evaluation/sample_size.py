"""How many films a site needs: to tell two models apart by AUROC, and to commission a threshold.

Paired AUROC difference (two models scored on the same films): the variance of each AUROC is
Hanley & McNeil's (Radiology 1982; 143:29-36), ``Q1 = A/(2-A)``, ``Q2 = 2A²/(1+A)``,
``V(A) = [A(1-A) + (n1-1)(Q1-A²) + (n0-1)(Q2-A²)] / (n1·n0)`` with n1 abnormal and n0 normal
films, and the variance of the difference is ``V1 + V2 - 2r·sqrt(V1·V2)`` with r the correlation
of the two AUROCs over the same films (Hanley & McNeil, Radiology 1983; 148:839-843: about 0.3-0.6
for two readings of the same cases; 0.5 assumed here). A two-sided test at ``alpha`` finds a true
difference ``delta`` with power ``1 - beta`` when ``delta / sd >= z(1-alpha/2) + z(1-beta)``.

Commissioning (``evaluation/commission.py``): with m abnormal films the rule (lower 95% bound
of sensitivity, Clopper-Pearson, >= target) allows ``m - k(m)`` misses, k(m) the fewest found
that meet it; a model whose true sensitivity at the threshold is p meets the rule with
probability ``P(Binomial(m, 1-p) <= m - k(m))``. The table gives the fewest abnormal films for
which that probability reaches the asked power.

    python -m cxr_triage.evaluation.sample_size            # both tables, as in docs/training.md
"""

from __future__ import annotations

import math
import sys
from typing import Sequence

from scipy import stats

from cxr_triage.evaluation import thresholds

#: the correlation of two models' AUROCs on the same films assumed by the tables
PAIRED_R = 0.5


def auroc_variance(auc: float, n_abnormal: int, n_normal: int) -> float:
    """Hanley-McNeil variance of an AUROC ``auc`` on ``n_abnormal`` and ``n_normal`` films."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    return (auc * (1 - auc) + (n_abnormal - 1) * (q1 - auc * auc)
            + (n_normal - 1) * (q2 - auc * auc)) / (n_abnormal * n_normal)


def paired_difference_sd(auc_a: float, auc_b: float, n_abnormal: int, n_normal: int, r: float = PAIRED_R) -> float:
    """Standard deviation of AUROC(a) - AUROC(b), both scored on the same films."""
    va, vb = auroc_variance(auc_a, n_abnormal, n_normal), auroc_variance(auc_b, n_abnormal, n_normal)
    return math.sqrt(max(va + vb - 2 * r * math.sqrt(va * vb), 1e-12))


def detectable_difference(auc: float, n_abnormal: int, n_normal: int, alpha: float = 0.05, power: float = 0.8,
                          r: float = PAIRED_R) -> float:
    """The smallest AUROC gain over ``auc`` that ``n_abnormal`` + ``n_normal`` paired films find
    with ``power`` at two-sided ``alpha`` (a gain past AUROC 1 is reported as ``1 - auc``)."""
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    lo, hi = 0.0, 1.0 - auc
    for _ in range(40):
        mid = (lo + hi) / 2
        if mid >= z * paired_difference_sd(auc, auc + mid, n_abnormal, n_normal, r):
            hi = mid
        else:
            lo = mid
    return hi


def films_for_difference(auc: float, delta: float, abnormal_share: float = 0.5, alpha: float = 0.05,
                         power: float = 0.8, r: float = PAIRED_R) -> tuple[int, int]:
    """(abnormal, normal) films, in the ratio ``abnormal_share``, needed to find an AUROC gain
    ``delta`` over ``auc`` with ``power`` (paired, two-sided ``alpha``). ValueError when the
    gain passes AUROC 1."""
    if not 0 < delta < 1 - auc:
        raise ValueError(f"a gain of {delta} over AUROC {auc} is impossible")

    def sizes(n: int) -> tuple[int, int]:
        a = max(2, round(n * abnormal_share))
        return a, max(2, n - a)

    n = 8
    while detectable_difference(auc, *sizes(n), alpha, power, r) > delta:
        n *= 2
    lo, hi = n // 2, n
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        if detectable_difference(auc, *sizes(mid), alpha, power, r) > delta:
            lo = mid
        else:
            hi = mid
    return sizes(hi)


def commissioning_power(m: int, true_sensitivity: float, target: float = 0.98, confidence: float = 0.95,
                        method: str = "exact") -> float:
    """Probability that ``m`` abnormal films meet the lower-bound rule when the model's true
    sensitivity at the threshold is ``true_sensitivity``."""
    found = thresholds.fewest_found_meeting(m, target, confidence, method)
    if not found:
        return 0.0
    return float(stats.binom.cdf(m - found, m, 1 - true_sensitivity))


def abnormal_for_commissioning(true_sensitivity: float, power: float = 0.8, target: float = 0.98,
                               confidence: float = 0.95, method: str = "exact", limit: int = 20_000) -> int | None:
    """Fewest abnormal films that meet the rule with probability ``power`` (scanned upwards: the
    probability is not monotone in m, it steps at each extra miss allowed); None past ``limit``."""
    m = thresholds.min_abnormal_for_lower_bound(target, confidence, method)
    while m <= limit:
        if commissioning_power(m, true_sensitivity, target, confidence, method) >= power:
            return m
        m += 1
    return None


def test_split_warning(n_abnormal: int, n_normal: int, auc: float = 0.85, wanted: float = 0.05) -> str | None:
    """A line for ``train`` when its test split cannot find an AUROC gain of ``wanted`` over a
    model near ``auc`` (80% power, paired, two-sided 0.05); None when it can. The gain it finds
    is :func:`detectable_difference`'s, which stops at ``1 - auc`` (a gain to AUROC 1): a split
    that cannot find even that is said so. The separate set's size keeps the split's class mix."""
    if n_abnormal < 2 or n_normal < 2:
        return (f"the test split ({n_abnormal} abnormal, {n_normal} normal films) cannot compare models: "
                "compare on a separate labelled set (docs/training.md, how many films)")
    found = detectable_difference(auc, n_abnormal, n_normal)
    if found <= wanted:
        return None
    a, n = films_for_difference(auc, wanted, n_abnormal / (n_abnormal + n_normal))
    finds = (f"cannot find even the largest possible AUROC gain over a model near {auc} ({1 - auc:.2f}, to "
             "AUROC 1) with 80% power" if found >= 1 - auc - 1e-6 else
             f"finds only AUROC differences of {found:.2f} or more over a model near {auc} (80% power)")
    return (f"the test split ({n_abnormal} abnormal, {n_normal} normal films, paired) {finds}: its "
            f"comparison with another model decides little; compare on a separate set of about {a + n} films "
            f"({a} abnormal, at this run's class mix) for a difference of {wanted} (docs/training.md; "
            "python -m cxr_triage.evaluation.sample_size)")


def auroc_table(aucs: Sequence[float] = (0.80, 0.85, 0.90), deltas: Sequence[float] = (0.03, 0.05, 0.08)) -> list[str]:
    """Markdown rows: films (half abnormal) to find each AUROC gain with 80% power, alpha 0.05."""
    rows = ["| bundled model's AUROC | " + " | ".join(f"gain {d:.2f}" for d in deltas) + " |",
            "|---|" + "---|" * len(deltas)]
    for auc in aucs:
        cells = []
        for d in deltas:
            a, n = films_for_difference(auc, d) if d < 1 - auc else (0, 0)
            cells.append(f"{a + n} ({a} abnormal)" if a else "-")
        rows.append(f"| {auc:.2f} | " + " | ".join(cells) + " |")
    return rows


def commissioning_table(sensitivities: Sequence[float] = (0.99, 0.995, 0.999),
                        powers: Sequence[float] = (0.5, 0.8, 0.9)) -> list[str]:
    """Markdown rows: abnormal films for the 0.98 / 95% Clopper-Pearson rule to be met."""
    rows = ["| true sensitivity at the threshold | " + " | ".join(f"{p:.0%} chance" for p in powers) + " |",
            "|---|" + "---|" * len(powers)]
    for s in sensitivities:
        cells = [str(abnormal_for_commissioning(s, p) or "> 20000") for p in powers]
        rows.append(f"| {s:.3f} | " + " | ".join(cells) + " |")
    return rows


def main() -> int:
    """Print both tables (Markdown) to stdout."""
    out = sys.stdout.write
    out("Films to find an AUROC gain over the bundled model (paired, two-sided alpha 0.05, power 0.8, "
        f"r = {PAIRED_R}, half the films abnormal):\n\n")
    out("\n".join(auroc_table()) + "\n\n")
    out("Abnormal films for commissioning (lower 95% Clopper-Pearson bound >= 0.98) to succeed:\n\n")
    out("\n".join(commissioning_table()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
