"""The nodule/mass operating point a model serves, and what it says about it in plain words.

Issue 22's rule: the nodule/mass flag's default point flags at most a share of the validation
normals (``normals_0.15``); the flag is shown only when that point catches at least
:data:`MIN_FLAG_SENSITIVITY` of the validation Nodule/Mass films. Otherwise every output (SR,
HL7, worklist, ``predict``) gives the nodule/mass score without a flag and says why, in the
words of :meth:`NodulePoint.statement`, from the model's own metadata
(``ModelMetadata.validation_metrics["nodule"]``, written by ``training.val_calibration`` and
``training.nodule_point``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cxr_triage.contract.model_file import ModelMetadata
from cxr_triage.contract.operating_points import flag_rate_of

#: the share of validation Nodule/Mass films the default point must catch for a flag to be shown
MIN_FLAG_SENSITIVITY = 0.6


@dataclass(frozen=True)
class NodulePoint:
    """One nodule/mass operating point of a model: its name and threshold (calibrated
    P(nodule or mass), unit 1), whether the flag is shown, and its validation figures (shares
    in [0, 1], None where the model does not store them): ``normals_flagged`` of the normal
    films at or above the threshold, ``sensitivity`` on the Nodule/Mass films."""

    name: str
    threshold: float
    shown: bool
    normals_flagged: float | None = None
    sensitivity: float | None = None

    def share(self) -> float | None:
        """The share of validation normals at or above the threshold: stored, else the one the
        point is named for (``normals_0.15``), else None."""
        return self.normals_flagged if self.normals_flagged is not None else flag_rate_of(self.name)

    def statement(self) -> str:
        """The point in plain words, as the SR, HL7, worklist and ``predict`` state it, e.g.
        "score only, no flag: at its operating point normals_0.15 (15% of validation normals
        at or above it) it caught 42% of validation Nodule/Mass films, below the 60% a flag needs"."""
        share = self.share()
        normals = f" ({share:.0%} of validation normals at or above it)" if share is not None else ""
        caught = (f"it caught {self.sensitivity:.0%} of validation Nodule/Mass films" if self.sensitivity is not None
                  else "its sensitivity on validation Nodule/Mass films is not stored in the model")
        if self.shown:
            return (f"flag at operating point {self.name}: flagged when score >= {self.threshold:.4f}"
                    f"{normals}; {caught}")
        return (f"score only, no flag: at its operating point {self.name}{normals} {caught}, "
                f"below the {MIN_FLAG_SENSITIVITY:.0%} a flag needs")


def nodule_point(meta: ModelMetadata, name: str | None = None) -> NodulePoint | None:
    """The nodule/mass point ``name`` (the model's default when None) of ``meta`` with its
    validation figures; None when the model has no nodule/mass output. KeyError for an
    unknown name. ``shown`` is ``meta.nodule_flag_shown`` (the rule is judged at the model's
    default point and holds for the model, whichever point is served)."""
    picked = meta.nodule_threshold(name)
    if picked is None:
        return None
    point, threshold = picked
    normals, sensitivity = _figures(meta.validation_metrics.get("nodule") or {}, point)
    return NodulePoint(point, threshold, bool(meta.nodule_flag_shown), normals, sensitivity)


def _figures(nodule: dict[str, Any], point: str) -> tuple[float | None, float | None]:
    """(share of normals flagged, sensitivity) of ``point`` in the model's nodule metrics."""
    by_rate = (nodule.get("flag_rate_points") or {}).get(point) or {}
    by_target = (nodule.get("operating_points") or {}).get(point) or {}
    normals = by_rate.get("normals_flagged")
    sensitivity = by_rate.get("sensitivity", by_target.get("sensitivity"))
    return (None if normals is None else float(normals), None if sensitivity is None else float(sensitivity))
