"""Which training draws get a synthetic nodule or mass, and what the network learns from them.

:class:`LesionDraws` is called by :class:`~cxr_triage.training.dataset.FilmDataset` for each
training draw, before the pipeline randomisation: an eligible film (a normal training film
whose labels do not conflict) gets, with probability ``p``, one lesion
(:func:`cxr_triage.training.lesions.insert_lesion`) and the targets of a film with a nodule
or mass: abnormal 1, nodule/mass 1, the NIH finding Nodule (up to 30 mm) or Mass (above) 1,
each known. Validation and test films are never altered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from cxr_triage.training.adapters import FIELD_MM, NIH_FINDINGS
from cxr_triage.training.lesions import insert_lesion, lung_fields
from cxr_triage.training.manifest import Entry
from cxr_triage.training.targets import ABNORMAL, NODULE, conflicting

#: the random stream of lesions, apart from the pipeline chain's
_STREAM = 7


@dataclass
class LesionDraws:
    """``p``: the share of an eligible film's draws that get a lesion; ``eligible`` (N,) bool;
    ``field_mm`` (N,) the films' long side in mm (NaN: unknown, a typical chest field used)."""

    p: float
    eligible: np.ndarray
    field_mm: np.ndarray
    _masks: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def of(cls, entries: Sequence[Entry], p: float) -> "LesionDraws":
        """Draws for training films ``entries``: the normal films without a label conflict."""
        eligible = np.array([e.label == 0 and not conflicting(e) for e in entries], dtype=bool)
        field_mm = np.array([_float(e.extra.get(FIELD_MM, "")) for e in entries], dtype=np.float64)
        return cls(p=float(p), eligible=eligible, field_mm=field_mm)

    def __call__(self, i: int, film: np.ndarray, label: np.ndarray, known: np.ndarray,
                 seed: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(film, targets (K,), known (K,)) of film ``i``'s draw in epoch ``seed`` = (run seed,
        epoch): unchanged, or with a lesion and the targets of a nodule/mass film."""
        if self.p <= 0 or not self.eligible[i]:
            return film, label, known
        rng = np.random.default_rng([seed[0], seed[1], int(i), _STREAM])
        if rng.random() >= self.p:
            return film, label, known
        if i not in self._masks:  # the film's lung field and room inside the body, once per film
            self._masks[i] = lung_fields(film)
        fmm = self.field_mm[i]
        out, lesion = insert_lesion(film, rng, None if np.isnan(fmm) else float(fmm), *self._masks[i])
        if lesion is None:
            return film, label, known
        return out, *lesion_targets(label, known, lesion.kind)


def lesion_targets(label: np.ndarray, known: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Targets (K,) and known mask (K,) of a film given a synthetic ``kind`` ("nodule" or
    "mass"): abnormal, nodule/mass and the matching NIH finding set to 1 and known."""
    y, k = np.array(label, dtype=np.float32, copy=True), np.array(known, dtype=np.float32, copy=True)
    cols = [ABNORMAL]
    if y.size > NODULE:
        cols += [NODULE, 2 + NIH_FINDINGS.index("Nodule" if kind == "nodule" else "Mass")]
    y[cols], k[cols] = 1.0, 1.0
    return y, k


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")
