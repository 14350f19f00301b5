"""Synthetic lung nodules and masses inserted into normal films: extra positives for the
nodule/mass output.

A lesion is a soft-tissue ellipsoid seen in projection: its path length through the body at
distance r from its centre is proportional to sqrt(1 - (r/R)^2) (the projection of a sphere
or ellipsoid), so a film shows it as a smooth dome of added attenuation. Its edge is *soft*
(a Gaussian-blurred dome), *lobulated* (the radius modulated by a few harmonics of the angle)
or *spiculated* (thin radial strands). Its contrast comes from the film itself: the dome's
peak is a share of the grey-level difference between the film's soft-tissue level
(mediastinum/heart, a high percentile of the central chest) and the local lung, scaled by the
lesion's thickness (a 60 mm mass approaches mediastinal density, a 5 mm nodule adds a few
percent). Its size in pixels comes from the film's pixel spacing (the film's long side in
mm, ``field_mm``; 400 mm when unknown, a typical chest field).

The lung-field mask is deliberately simple: the central chest region (rows 15-85 %, columns
10-90 %, the mediastinal band left out) where the smoothed film is darker than its central
median, i.e. aerated lung. A centre is drawn inside it, at least one radius from the film's
border. Sizes follow the Fleischner Society glossary (Hansell et al., Radiology 2008):
nodule up to 30 mm, mass above 30 mm.

Insertion happens on the decoded film *before* the pipeline randomisation
(:mod:`cxr_triage.training.augment`), so the lesion passes the same export chain as the
film. Validation and test films are never altered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: a chest field's long side (mm) when a film's pixel spacing is unknown
DEFAULT_FIELD_MM = 400.0
NODULE_MM = (5.0, 30.0)
MASS_MM = (30.0, 60.0)
EDGES = ("soft", "lobulated", "spiculated")


@dataclass(frozen=True)
class Lesion:
    """What was inserted: ``kind`` "nodule" or "mass", centre (row, col) and radius in pixels
    of the film it went into, diameter in mm, ``edge`` one of :data:`EDGES`, ``peak`` the
    added grey level at its centre (film scale [0, 1])."""

    kind: str
    row: float
    col: float
    radius_px: float
    diameter_mm: float
    edge: str
    peak: float


def lung_mask(film: np.ndarray) -> np.ndarray:
    """(H, W) bool: a rough lung-field mask of a MONOCHROME2 film (H, W) in [0, 1] or uint8:
    the central chest region, mediastinal band excluded, darker than its central median."""
    f = _unit(film)
    h, w = f.shape
    smooth = ndimage.gaussian_filter(f, sigma=max(1.0, min(h, w) / 100))
    rows, cols = np.mgrid[0:h, 0:w]
    central = (rows > 0.15 * h) & (rows < 0.85 * h) & (cols > 0.10 * w) & (cols < 0.90 * w)
    central &= np.abs(cols - w / 2) > 0.09 * w
    if not central.any():
        return central
    mask = central & (smooth < np.median(smooth[central]))
    return np.asarray(ndimage.binary_opening(mask, iterations=2), dtype=bool)


def draw_lesion(rng: np.random.Generator, field_mm: float, shape: tuple[int, int],
                mask: np.ndarray) -> tuple[str, float, float, float, str] | None:
    """(kind, diameter mm, row, col, edge) of a random lesion whose centre lies in ``mask``
    at least one radius from the border; None when the mask has no room for it."""
    kind = "nodule" if rng.random() < 0.65 else "mass"
    lo, hi = NODULE_MM if kind == "nodule" else MASS_MM
    diameter = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))  # small nodules as often as large
    radius = diameter / 2 / (field_mm / max(shape))
    h, w = shape
    rows, cols = np.nonzero(mask)
    inside = (rows > radius) & (rows < h - radius) & (cols > radius) & (cols < w - radius)
    if not inside.any():
        return None
    pick = int(rng.choice(np.flatnonzero(inside)))
    return kind, diameter, float(rows[pick]), float(cols[pick]), str(rng.choice(EDGES))


def profile(shape: tuple[int, int], row: float, col: float, radius: float, edge: str,
            rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 in [0, 1]: the projected thickness of an ellipsoid (axes ratio 0.75-1,
    random orientation) centred at (row, col), normalised to 1 at its centre, with the
    ``edge`` shape applied (soft: blurred; lobulated: radius modulated by 2-5 lobes;
    spiculated: 6-16 radial strands up to 1.5 radii long)."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = y - row, x - col
    theta = float(rng.uniform(0, np.pi))
    a, b = radius, radius * float(rng.uniform(0.75, 1.0))
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    rr = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    angle = np.arctan2(dy, dx)
    if edge == "lobulated":
        lobes = int(rng.integers(2, 6))
        rr = rr / (1.0 + float(rng.uniform(0.08, 0.2)) * np.sin(lobes * angle + float(rng.uniform(0, 2 * np.pi))))
    dome = np.sqrt(np.clip(1.0 - rr**2, 0.0, 1.0)).astype(np.float32)
    if edge == "soft":
        dome = ndimage.gaussian_filter(dome, sigma=max(0.5, 0.15 * radius))
    elif edge == "spiculated":
        dome = np.maximum(dome, _spicules(rr, angle, radius, rng))
    peak = float(dome.max())
    return (dome / peak if peak > 0 else dome).astype(np.float32)


def _spicules(rr: np.ndarray, angle: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Thin strands radiating from the edge (r/R in 0.8-2.5), fading outwards."""
    out = np.zeros_like(rr)
    width = max(0.6, 0.06 * radius)
    for _ in range(int(rng.integers(6, 17))):
        phi = float(rng.uniform(-np.pi, np.pi))
        reach = float(rng.uniform(1.2, 2.5))
        off = np.abs(np.angle(np.exp(1j * (angle - phi)))) * rr * radius  # distance to the ray (px)
        along = (rr > 0.8) & (rr < reach)
        fade = np.clip((reach - rr) / (reach - 0.8), 0.0, 1.0) * 0.45
        out = np.maximum(out, np.where(along, fade * np.exp(-((off / width) ** 2)), 0.0))
    return out.astype(np.float32)


def insert_lesion(film: np.ndarray, rng: np.random.Generator, field_mm: float | None = None,
                  mask: np.ndarray | None = None) -> tuple[np.ndarray, Lesion | None]:
    """A copy of ``film`` (H, W) uint8 or float in [0, 1], MONOCHROME2, with one synthetic
    nodule or mass in its lung field, and what was inserted (the film unchanged and None
    when no lung field was found). ``field_mm``: the film's long side in mm
    (:data:`DEFAULT_FIELD_MM` when None); ``mask``: its :func:`lung_mask` when known."""
    f = _unit(film)
    mask = lung_mask(f) if mask is None else mask
    field = float(field_mm) if field_mm and field_mm > 0 else DEFAULT_FIELD_MM
    drawn = draw_lesion(rng, field, f.shape, mask)
    if drawn is None:
        return _like(f, film), None
    kind, diameter, row, col, edge = drawn
    radius = diameter / 2 / (field / max(f.shape))
    # the lesion's window (spicules reach 2.5 radii): every step works on it alone
    m = int(np.ceil(2.6 * radius)) + 4
    r0, r1 = max(0, int(row) - m), min(f.shape[0], int(row) + m + 1)
    c0, c1 = max(0, int(col) - m), min(f.shape[1], int(col) + m + 1)
    win = f[r0:r1, c0:c1]
    dome = profile(win.shape, row - r0, col - c0, radius, edge, rng)
    tissue = float(np.percentile(f[f.shape[0] // 5: 4 * f.shape[0] // 5: 2, ::2], 92))
    near = win[max(0, int(row) - r0 - int(radius)): int(row) - r0 + int(radius) + 1,
               max(0, int(col) - c0 - int(radius)): int(col) - c0 + int(radius) + 1]
    lung = float(near.mean())
    # projected thickness: a share of the tissue-lung difference, growing with the diameter
    peak = max(0.015, (tissue - lung) * min(1.0, diameter / 60.0) * float(rng.uniform(0.6, 1.2)))
    texture = 1.0 + 0.08 * ndimage.gaussian_filter(rng.standard_normal(win.shape).astype(np.float32), 1.5)
    out = f.copy()
    out[r0:r1, c0:c1] = np.clip(win + peak * dome * texture * (1.0 - win), 0.0, 1.0)
    lesion = Lesion(kind=kind, row=row, col=col, radius_px=radius, diameter_mm=diameter, edge=edge, peak=peak)
    return _like(out, film), lesion


def _unit(film: np.ndarray) -> np.ndarray:
    a = np.asarray(film)
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)


def _like(f: np.ndarray, film: np.ndarray) -> np.ndarray:
    """``f`` in [0, 1] back to ``film``'s dtype (uint8 or float32)."""
    if np.asarray(film).dtype == np.uint8:
        return np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8)
    return f.astype(np.float32)
