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
HEATMAP_OUTPUT = "heatmap"      # float32 (N, h, w) in [0, 1]: class-activation map


@dataclass
class ModelMetadata:
    """Identity, preprocessing, calibration and operating points of one exported model.

    thresholds maps an operating-point name (``"sens_0.98"``) to a probability threshold:
    a film with score >= threshold is *suspicious*, below it *likely normal*.
    """

    name: str
    version: str
    preprocessing: PreprocessSpec = field(default_factory=PreprocessSpec)
    thresholds: dict[str, float] = field(default_factory=dict)
    default_operating_point: str = "sens_0.98"
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
        name = operating_point or self.default_operating_point
        if name not in self.thresholds:
            raise KeyError(
                f"model {self.name} {self.version} has no operating point {name!r} "
                f"(has: {', '.join(sorted(self.thresholds)) or 'none'})"
            )
        return name, float(self.thresholds[name])
