"""A digitised screen-film look: what a chest film exposed on screen-film and later scanned
looks like, as one more step of the pipeline randomisation and as a fixed check of the
validation films.

The chain, on a MONOCHROME2 film (H, W) in [0, 1] taken as relative log exposure:

1. characteristic (Hurter-Driffield) curve: optical density D = Dmin + (Dmax - Dmin) *
   sigmoid(gamma * (x - x0)) (toe and shoulder compress the dark lungs and the bright
   mediastinum; film gamma 2-3.5, Bushberg et al., *The Essential Physics of Medical
   Imaging*, ch. 7); the scanner records density, shown as brightness again;
2. film grain: noise whose strength grows with density, spatially correlated over about a
   pixel (silver-halide clumps as a scanner samples them);
3. scanner blur (Gaussian, sigma 0.5-1.5 px) and a low scan resolution (the film shrunk to a
   short side of 128-320 px and brought back to its size, as a low-resolution scan is later
   resampled by a viewer);
4. quantisation of the digitiser to 6-8 bits.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def screen_film(film: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Film (H, W) float in [0, 1] (or uint8) -> float32 (H, W) in [0, 1] with a random
    digitised screen-film look (module docstring). Deterministic for a given ``rng`` state."""
    f = np.asarray(film, dtype=np.float32)
    if np.asarray(film).dtype == np.uint8:
        f = f / 255.0
    h, w = f.shape
    gamma = float(rng.uniform(2.0, 3.5))
    x0 = float(np.median(f)) + float(rng.uniform(-0.08, 0.08))
    d = 1.0 / (1.0 + np.exp(-gamma * 2.0 * (f - x0)))  # density, 0..1 between Dmin and Dmax
    lo, hi = float(d.min()), float(d.max())
    d = (d - lo) / (hi - lo) if hi > lo else d
    grain = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), float(rng.uniform(0.5, 1.0)))
    d = d + float(rng.uniform(0.01, 0.04)) * (0.3 + d) * grain
    d = ndimage.gaussian_filter(d, float(rng.uniform(0.5, 1.5)))
    side = int(rng.integers(128, 321))
    if min(h, w) > side:
        scale = side / min(h, w)
        img = Image.fromarray(np.clip(d, 0, 1).astype(np.float32), mode="F")
        small = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
        d = np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    levels = 2 ** int(rng.integers(6, 9)) - 1
    return (np.round(np.clip(d, 0.0, 1.0) * levels) / levels).astype(np.float32)
