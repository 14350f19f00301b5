"""Train-time randomisation of what differs between image pipelines, applied to the decoded
film *before* the shared ``preprocess()``.

The shared films reached this project through different pipelines (resizers, JPEG at some
quality, 224 px vs 512 px; ../shared/data/README.md), and a network learns such a pipeline
instead of the lungs when one source holds most of one class. Each training draw therefore
passes the film through a random acquisition/export chain, so no pipeline trait stays
correlated with the label:

* crop (up to 6 % a side) or a constant border (up to 4 %, black or white);
* one or two resampling steps to a random side (160 px to the film's own), each with a
  random kernel (nearest, bilinear, bicubic, box, Hamming, Lanczos);
* JPEG re-encoding at a random quality (40-95);
* blur (Gaussian) or sharpening (unsharp mask);
* gamma (0.7-1.5) and Gaussian noise;
* first of all, with probability ``film_look``, a digitised screen-film look
  (:func:`cxr_triage.training.film_look.screen_film`: characteristic curve, grain, scanner
  blur, low resolution, 6-8 bit quantisation).

Geometric jitter (rotation, scale, shift) stays in the MONAI transforms that act on the
preprocessed tensor (:func:`cxr_triage.training.dataset.train_transforms`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from cxr_triage.training.film_look import screen_film

_KERNELS = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC,
            Image.Resampling.BOX, Image.Resampling.HAMMING, Image.Resampling.LANCZOS)


@dataclass(frozen=True)
class PipelineAugment:
    """Random pipeline chain; ``p`` scales every step's probability (0 disables the chain);
    ``film_look``: the probability of the screen-film look before it (0: never, and no random
    draw for it, so a chain without it is the same as before it existed)."""

    p: float = 1.0
    min_side: int = 160
    film_look: float = 0.0

    def __call__(self, film: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Film (H, W) uint8 or float in [0, 1] -> float32 (H', W') in [0, 1]."""
        if self.film_look > 0 and rng.random() < self.film_look:
            film = screen_film(film, rng)
        img = Image.fromarray(_to_uint8(film), mode="L")
        p = self.p
        if p <= 0:
            return np.asarray(img, dtype=np.float32) / 255.0
        if rng.random() < 0.3 * p:
            img = _crop(img, rng)
        elif rng.random() < 0.15 * p:
            img = _border(img, rng)
        if rng.random() < 0.7 * p:
            for _ in range(2 if rng.random() < 0.3 else 1):
                side = min(img.size)
                if side <= self.min_side:
                    break
                new = int(rng.integers(self.min_side, side + 1))
                scale = new / side
                size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
                img = img.resize(size, resample=_KERNELS[int(rng.integers(len(_KERNELS)))])
        if rng.random() < 0.5 * p:
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=int(rng.integers(40, 96)))
            buf.seek(0)
            with Image.open(buf) as decoded:
                img = decoded.convert("L")
        u = rng.random()
        if u < 0.25 * p:
            img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.5))))
        elif u < 0.45 * p:
            img = img.filter(ImageFilter.UnsharpMask(radius=float(rng.uniform(0.8, 2.5)),
                                                     percent=int(rng.integers(40, 160)), threshold=0))
        out = np.asarray(img, dtype=np.float32) / 255.0
        if rng.random() < 0.5 * p:
            out = np.power(out, np.float32(np.exp(rng.uniform(np.log(0.7), np.log(1.5)))))
        if rng.random() < 0.3 * p:
            out = np.clip(out + rng.normal(0.0, rng.uniform(0.003, 0.02), out.shape).astype(np.float32), 0.0, 1.0)
        return out.astype(np.float32, copy=False)


def _to_uint8(film: np.ndarray) -> np.ndarray:
    if film.dtype == np.uint8:
        return film
    return np.clip(np.rint(np.asarray(film, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def _crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    left, right, top, bottom = (int(rng.uniform(0, 0.06) * s) for s in (w, w, h, h))
    return img.crop((left, top, w - right, h - bottom))


def _border(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    pad = [int(rng.uniform(0, 0.04) * s) for s in (w, h, w, h)]
    canvas = Image.new("L", (w + pad[0] + pad[2], h + pad[1] + pad[3]), color=int(rng.choice([0, 255])))
    canvas.paste(img, (pad[0], pad[1]))
    return canvas
