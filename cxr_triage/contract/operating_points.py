"""Operating points: how they are named and how a threshold is chosen for a sensitivity.

An operating point is a probability threshold on the calibrated score; a film with
score >= threshold is *suspicious* (:func:`cxr_triage.contract.decision.decide`). Most are
named for the sensitivity they were chosen for (``sens_0.98``); a flag that must stay rare
(the nodule/mass flag) is named for the share of normal films it may flag (``normals_0.15``).
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

_NAME = re.compile(r"^sens_(0?\.\d+|1(\.0*)?)$")
_RATE_NAME = re.compile(r"^normals_(0?\.\d+|1(\.0*)?)$")


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


def flag_rate_point_name(max_normals_flagged: float) -> str:
    """``0.15 -> "normals_0.15"``: the operating point that flags at most that share of normal films."""
    r = float(max_normals_flagged)
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"share of normals {r} is not in [0, 1]")
    return f"normals_{r:g}"


def flag_rate_of(name: str) -> float | None:
    """The share of normals a name like ``"normals_0.15"`` stands for, None for other names."""
    m = _RATE_NAME.match(name.strip())
    return float(m.group(1)) if m else None


def threshold_for_flag_rate(normal_scores: Sequence[float] | np.ndarray, max_share: float) -> float:
    """A threshold that flags (score >= threshold) at most ``max_share`` of these normal
    films' scores (N,): halfway between the score of the normal film at rank
    floor(max_share * N) + 1 (highest first, the first one left unflagged) and the one above
    it, as a float32 value (at least one float32 step above the unflagged score), so a score
    the model file computes in float32 lands on the same side. Raises ValueError without
    normal films."""
    s = np.sort(np.asarray(normal_scores, dtype=np.float64).reshape(-1))[::-1]
    if s.size == 0:
        raise ValueError("no normal films: cannot choose a threshold for a share of normals")
    k = int(math.floor(max_share * s.size + 1e-9))
    if k >= s.size:
        return float(np.nextafter(np.float32(s[-1]), np.float32(0)))
    above = np.nextafter(np.float32(s[k]), np.float32(np.inf))
    return float(max(above, np.float32((s[k] + s[k - 1]) / 2)) if k > 0 else above)
