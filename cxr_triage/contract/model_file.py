"""What a model file says about itself, stored as JSON in the ONNX ``metadata_props``.

The worker reads everything it needs from here (preprocessing, thresholds, version), so a
retrained model drops in without code changes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from cxr_triage.contract.preprocessing import PreprocessSpec

METADATA_KEY = "cxr_triage"
INPUT_NAME = "image"            # float32 (N, 1, size, size), output of preprocess()
SCORE_OUTPUT = "score"          # float32 (N,): calibrated probability the film is abnormal
NODULE_OUTPUT = "nodule_score"  # float32 (N,): calibrated probability of a nodule or mass (optional output)
HEATMAP_OUTPUT = "heatmap"      # float32 (N, h, w) in [0, 1]: class-activation map (optional output)


@dataclass
class ModelMetadata:
    """Identity, preprocessing, calibration and operating points of one exported model.

    thresholds maps an operating-point name (``"sens_0.98"``) to a probability threshold:
    a film with score >= threshold is *suspicious*, below it *likely normal*.

    nodule_thresholds: the same for the ``nodule_score`` output (target sensitivity on
    validation Nodule/Mass films); a film at or above it gets the *nodule/mass* flag, an added
    finding that does not change the triage decision. Empty: the model has no usable
    nodule/mass output. Its points are named for a target sensitivity (``sens_0.9``) or for
    the share of validation normals they flag (``normals_0.15``,
    :func:`cxr_triage.contract.operating_points.flag_rate_point_name`).

    nodule_flag_shown: False when the nodule/mass output could not catch enough Nodule/Mass
    films at its default point while flagging few normals (the figures are in
    ``validation_metrics["nodule"]``): consumers then show its score without a flag.

    heatmap_validated: the ``heatmap`` output passed the pointing-game test against
    radiologists' boxes (it points at findings more often than a fixed guess; the figures are
    in ``validation_metrics["heatmap"]``). Consumers show a heatmap only when this is true.
    """

    name: str
    version: str
    preprocessing: PreprocessSpec = field(default_factory=PreprocessSpec)
    thresholds: dict[str, float] = field(default_factory=dict)
    default_operating_point: str = "sens_0.98"
    nodule_thresholds: dict[str, float] = field(default_factory=dict)
    nodule_default_operating_point: str = "sens_0.9"
    nodule_flag_shown: bool = True
    heatmap_validated: bool = False
    temperature: float = 1.0
    architecture: str = ""
    manufacturer: str = "cxr-triage project"
    training_manifest_sha256: str = ""
    validation_metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["preprocessing"] = self.preprocessing.to_dict()
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelMetadata":
        data = json.loads(text)
        data["preprocessing"] = PreprocessSpec.from_dict(data.get("preprocessing", {}))
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def threshold(self, operating_point: str | None = None) -> tuple[str, float]:
        """(name, threshold) for an operating point, the model's default when None."""
        return self._pick(self.thresholds, operating_point or self.default_operating_point, "operating point")

    def nodule_threshold(self, operating_point: str | None = None) -> tuple[str, float] | None:
        """(name, threshold) of a nodule/mass operating point (the model's default when None);
        None when the model has no usable nodule/mass output. KeyError for an unknown name."""
        if not self.nodule_thresholds:
            return None
        return self._pick(self.nodule_thresholds, operating_point or self.nodule_default_operating_point,
                          "nodule/mass operating point")

    def _pick(self, thresholds: dict[str, float], name: str, what: str) -> tuple[str, float]:
        if name not in thresholds:
            raise KeyError(f"model {self.name} {self.version} has no {what} {name!r} "
                           f"(has: {', '.join(sorted(thresholds)) or 'none'})")
        return name, float(thresholds[name])
