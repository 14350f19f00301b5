"""Operating points: how they are named and how a threshold is chosen for a sensitivity.

An operating point is a probability threshold on the calibrated score; a film with
score >= threshold is *suspicious* (:func:`cxr_triage.contract.decision.decide`).
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

_NAME = re.compile(r"^sens_(0?\.\d+|1(\.0*)?)$")


def operating_point_name(target_sensitivity: float) -> str:
    """``0.98 -> "sens_0.98"``, ``0.995 -> "sens_0.995"`` (shortest exact form: names never collide)."""
    t = float(target_sensitivity)
    if not 0.0 < t <= 1.0:
        raise ValueError(f"target sensitivity {t} is not in (0, 1]")
    return f"sens_{t:g}"


def target_of(name: str) -> float | None:
    """The target sensitivity a name like ``"sens_0.98"`` stands for, None for other names."""
    m = _NAME.match(name.strip())
    return float(m.group(1)) if m else None


def threshold_for_sensitivity(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                              target: float) -> float:
    """The highest threshold whose sensitivity on these films is >= ``target``.

    labels: (N,) 1 = abnormal, 0 = normal; scores: (N,) calibrated P(abnormal). With k abnormal
    films the one at rank ceil(target * k) (highest first) sets the threshold. Raises ValueError
    when there is no abnormal film."""
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    pos = np.sort(s[y == 1])[::-1]
    if pos.size == 0:
        raise ValueError("no abnormal films: cannot choose a threshold for a sensitivity")
    k = max(1, math.ceil(target * pos.size - 1e-9))
    return float(pos[k - 1])
