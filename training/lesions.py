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
percent). That peak is the grey level *added* at the centre (the dome times a +-8 % texture),
not scaled down by the local grey level (issue 22: the first version multiplied it by
``1 - grey``, leaving a median 63 % of the design on real films). The peak is kept in
[:data:`MIN_PEAK`, tissue - lung]: at most mediastinal density, and at least 3 % of the film's
grey range. That floor is our own choice, not taken from a measured threshold: a lesion much
fainter than the anatomical noise of the lung field (ribs, vessels: several per cent of the grey
range) is one the film does not show, i.e. a label without a finding. Its size in pixels comes from the film's pixel spacing
(the film's long side in mm, ``field_mm``; 400 mm when unknown, a typical chest field).

The lung-field mask is deliberately simple: the central chest region (rows 15-85 %, columns
10-90 %, the mediastinal band left out) where the smoothed film is darker than its central
median, i.e. aerated lung; without the background outside the body (the dark region
connected to the film's border, darker than halfway between the film's 1st percentile and
the lung level) and three smoothing widths next to it, in the region and in its median
(issue 22: one real film in 8 got a lesion there). A centre is drawn inside it, at least one
radius from the film's border, and kept only when the lesion's disc (one radius) lies inside
the body and at least :data:`MIN_IN_LUNG` of it in the mask (up to :data:`TRIES` draws).
Sizes follow the Fleischner Society glossary (Hansell et al., Radiology 2008): nodule up to
30 mm, mass above 30 mm.

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
#: the faintest peak (film grey scale [0, 1]) a lesion gets (module docstring: the source)
MIN_PEAK = 0.03
#: the share of a lesion's disc that must lie in the lung mask, and the draws tried for it
MIN_IN_LUNG = 0.6
TRIES = 10


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
    the central chest region, mediastinal band excluded, darker than its central median, less
    the background outside the body (:func:`background`); see :func:`lung_fields`."""
    return lung_fields(film)[0]


def lung_fields(film: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask, room) of a film (H, W): its :func:`lung_mask` (bool) and ``room`` (H, W) float32,
    each pixel's distance in pixels to the background outside the body (inf when the film
    shows no background): a lesion of radius R fits inside the body where room >= R."""
    f = _unit(film)
    h, w = f.shape
    sigma = max(1.0, min(h, w) / 100)
    smooth = ndimage.gaussian_filter(f, sigma=sigma)
    rows, cols = np.mgrid[0:h, 0:w]
    central = (rows > 0.15 * h) & (rows < 0.85 * h) & (cols > 0.10 * w) & (cols < 0.90 * w)
    central &= np.abs(cols - w / 2) > 0.09 * w
    room = np.full((h, w), np.inf, dtype=np.float32)
    if not central.any():
        return central, room
    mask = central & (smooth < np.median(smooth[central]))
    outside = background(smooth, float(np.median(smooth[mask])) if mask.any() else float(smooth.min()))
    if outside.any():
        room = ndimage.distance_transform_edt(~outside).astype(np.float32)
        central &= room > 3 * sigma  # the smoothing blurs the body's edge over a few sigma
        if not central.any():
            return central, room
        mask = central & (smooth < np.median(smooth[central]))  # the median of the body alone
    return np.asarray(ndimage.binary_opening(mask, iterations=2), dtype=bool), room


def background(smooth: np.ndarray, lung: float) -> np.ndarray:
    """(H, W) bool: the background outside the body of a smoothed film (H, W) in [0, 1]: the
    pixels darker than halfway between its 1st percentile and the ``lung`` grey level that are
    connected to the film's border (aerated lung is enclosed by the chest wall)."""
    dark = smooth < float(np.percentile(smooth, 1)) + 0.5 * (lung - float(np.percentile(smooth, 1)))
    labels, _ = ndimage.label(dark)
    edge = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return np.isin(labels, edge[edge > 0])


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
                  mask: np.ndarray | None = None,
                  room: np.ndarray | None = None) -> tuple[np.ndarray, Lesion | None]:
    """A copy of ``film`` (H, W) uint8 or float in [0, 1], MONOCHROME2, with one synthetic
    nodule or mass in its lung field, and what was inserted (the film unchanged and None
    when no lung field was found). ``field_mm``: the film's long side in mm
    (:data:`DEFAULT_FIELD_MM` when None); ``mask``, ``room``: its :func:`lung_fields` when
    known (both or neither; ``room`` None with a ``mask``: no check against the background)."""
    f = _unit(film)
    if mask is None:
        mask, room = lung_fields(f)
    field = float(field_mm) if field_mm and field_mm > 0 else DEFAULT_FIELD_MM
    drawn = _draw_in_lung(rng, field, mask, room)
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
    peak = design_peak(tissue, lung, diameter, float(rng.uniform(0.6, 1.2)))
    texture = 1.0 + 0.08 * ndimage.gaussian_filter(rng.standard_normal(win.shape).astype(np.float32), 1.5)
    out = f.copy()
    out[r0:r1, c0:c1] = np.clip(win + peak * dome * texture, 0.0, 1.0)  # added, as designed
    lesion = Lesion(kind=kind, row=row, col=col, radius_px=radius, diameter_mm=diameter, edge=edge, peak=peak)
    return _like(out, film), lesion


def design_peak(tissue: float, lung: float, diameter_mm: float, share: float) -> float:
    """The grey level (film scale [0, 1]) a lesion adds at its centre: its projected thickness
    as a ``share`` (0.6-1.2) of the soft-tissue - lung difference, growing with the diameter
    (a 60 mm mass approaches mediastinal density), kept in [:data:`MIN_PEAK`, tissue - lung]."""
    span = max(tissue - lung, MIN_PEAK)
    return float(np.clip(span * min(1.0, diameter_mm / 60.0) * share, MIN_PEAK, span))


def _draw_in_lung(rng: np.random.Generator, field_mm: float, mask: np.ndarray,
                  room: np.ndarray | None) -> tuple[str, float, float, float, str] | None:
    """:func:`draw_lesion` until the lesion's disc lies inside the body (``room`` at its centre
    at least its radius) and at least :data:`MIN_IN_LUNG` of it in ``mask`` (up to
    :data:`TRIES` draws); None when no draw fits."""
    for _ in range(TRIES):
        drawn = draw_lesion(rng, field_mm, mask.shape, mask)
        if drawn is None:
            return None
        radius = drawn[1] / 2 / (field_mm / max(mask.shape))
        fits = room is None or room[int(drawn[2]), int(drawn[3])] >= radius
        if fits and in_lung_share(mask, drawn[2], drawn[3], radius) >= MIN_IN_LUNG:
            return drawn
    return None


def in_lung_share(mask: np.ndarray, row: float, col: float, radius: float) -> float:
    """The share of the disc of ``radius`` px at (row, col) that lies in ``mask`` (H, W)."""
    m = int(np.ceil(radius)) + 1
    r0, c0 = max(0, int(row) - m), max(0, int(col) - m)
    win = mask[r0:int(row) + m + 1, c0:int(col) + m + 1]
    y, x = np.mgrid[0:win.shape[0], 0:win.shape[1]]
    disc = (y + r0 - row) ** 2 + (x + c0 - col) ** 2 <= max(radius, 1.0) ** 2
    return float(win[disc].mean()) if disc.any() else 0.0


def _unit(film: np.ndarray) -> np.ndarray:
    a = np.asarray(film)
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)


def _like(f: np.ndarray, film: np.ndarray) -> np.ndarray:
    """``f`` in [0, 1] back to ``film``'s dtype (uint8 or float32)."""
    if np.asarray(film).dtype == np.uint8:
        return np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8)
    return f.astype(np.float32)
