"""The one preprocessing definition, used by training, export checks and the worker.

Input is a decoded film as float32 in [0, 1], MONOCHROME2 (bone bright), any size: the
reader (``cxr_triage.inference.reader``) produces it from DICOM or PNG. Output is the model
input, shape (1, size, size), float32. The parameters travel inside the ONNX file
(``ModelMetadata.preprocessing``) so the worker applies exactly what training used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class PreprocessSpec:
    """Parameters of :func:`preprocess`.

    size: square model input side (the film is squashed, not cropped: lung apices and bases
        sit near the edges of a chest film).
    harmonise_size: the film is first reduced to this side (area averaging) and then resized to
        ``size``; a common low resolution removes differences between the pipelines that
        produced the training sources (see the RSNA caution in ../shared/data/README.md).
    clip_low_pct / clip_high_pct: percentile window that maps intensities to [0, 1], so
        exposure and VOI differences between sites and sources matter less.
    mean / std: standardisation after the window.
    """

    size: int = 224
    harmonise_size: int = 224
    clip_low_pct: float = 0.5
    clip_high_pct: float = 99.5
    mean: float = 0.5
    std: float = 0.25

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessSpec":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def _resize(image: np.ndarray, side: int) -> np.ndarray:
    """Area-averaged (antialiased) resize to side x side."""
    if image.shape == (side, side):
        return image
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    resample = Image.Resampling.BOX if min(image.shape) >= side else Image.Resampling.BILINEAR
    return np.asarray(pil.resize((side, side), resample=resample), dtype=np.float32)


def preprocess(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Film (H, W) float in [0, 1], MONOCHROME2 -> model input (1, size, size) float32."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale film, got shape {image.shape}")
    img = image.astype(np.float32, copy=False)
    img = _resize(img, spec.harmonise_size)
    img = _resize(img, spec.size)
    lo, hi = np.percentile(img, [spec.clip_low_pct, spec.clip_high_pct])
    if hi - lo < 1e-6:
        img = np.zeros_like(img)
    else:
        img = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    img = (img - spec.mean) / spec.std
    return img[None, :, :].astype(np.float32, copy=False)
