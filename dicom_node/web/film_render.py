"""PNG pictures for the worklist: the spooled film, its heatmap overlay, or both composited.

The film is decoded by the inference reader (the same pixels the model saw, MONOCHROME2);
the heatmap covers the whole film (preprocessing squashes, it does not crop), so it is
simply resized to the film's shape.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image


def _read_pixels(path: str) -> npt.NDArray[np.float32]:
    """(H, W) float32 in [0, 1], MONOCHROME2."""
    try:
        from cxr_triage.inference.reader import read_film
    except ImportError:  # pragma: no cover - reader not installed: plain pydicom/Pillow shim
        pass
    else:
        return np.asarray(read_film(path).pixels, dtype=np.float32)
    if path.lower().endswith((".png", ".jpg", ".jpeg")):  # pragma: no cover
        return np.asarray(Image.open(path).convert("F"), dtype=np.float32) / 255.0
    import pydicom  # pragma: no cover
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut  # pragma: no cover

    ds = pydicom.dcmread(path)  # pragma: no cover
    arr: npt.NDArray[np.float32] = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float32)
    arr = (arr - arr.min()) / max(float(np.ptp(arr)), 1e-6)
    return 1.0 - arr if ds.get("PhotometricInterpretation") == "MONOCHROME1" else arr


#: Decoded films are kept at most this large, so a thumbnail and a page view decode once.
BASE_SIDE = 1024


@lru_cache(maxsize=24)
def _film_base(path: str, mtime_ns: int) -> Image.Image:
    pixels = _read_pixels(path)
    img = Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    img.thumbnail((BASE_SIDE, BASE_SIDE), Image.Resampling.LANCZOS)
    return img


@lru_cache(maxsize=256)
def _film_thumbnail(path: str, mtime_ns: int, max_side: int) -> Image.Image:
    img = _film_base(path, mtime_ns).copy()
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return img


def film_image(path: str | Path, max_side: int = 512) -> Image.Image:
    """The film as an 8-bit grayscale picture no larger than ``max_side`` (decoded once)."""
    p = Path(path)
    return _film_thumbnail(str(p), p.stat().st_mtime_ns, int(max_side)).copy()


def heat_overlay(heatmap: np.ndarray, size: tuple[int, int], max_alpha: float = 0.55) -> Image.Image:
    """RGBA overlay of ``size`` (w, h): colour from the 'jet' map, transparent where heat is low."""
    from matplotlib import colormaps

    heat_img = Image.fromarray(np.clip(np.asarray(heatmap, dtype=np.float32), 0, 1), mode="F")
    heat = np.asarray(heat_img.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    rgba = colormaps["jet"](heat)  # (h, w, 4) floats
    rgba[..., 3] = max_alpha * np.clip((heat - 0.2) / 0.8, 0.0, 1.0)
    return Image.fromarray((rgba * 255.0 + 0.5).astype(np.uint8), mode="RGBA")


def composite(film: Image.Image, heatmap: np.ndarray | None) -> Image.Image:
    """Film with the heatmap blended over it (the film alone when there is no heatmap)."""
    base = film.convert("RGBA")
    if heatmap is not None:
        base = Image.alpha_composite(base, heat_overlay(heatmap, base.size))
    return base.convert("RGB")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
