"""The summary image's picture: the film as the model read it, with the result burned in.

:func:`render_summary` draws (H, W, 3) uint8 RGB: a banner "AI TRIAGE OUTPUT - NOT FOR
DIAGNOSIS" (and an AMENDED line for an amended result), the decision, score, threshold and
operating point (or the not-assessable reason), the nodule/mass flag with its score and
threshold (models with that output), the model name and version; under it the film
(MONOCHROME2, VOI applied, at most :data:`MAX_SIDE` px) with, for suspicious films of a model
whose heatmap passed validation, the heatmap; a footer. No DICOM here (``summary_image``
makes the Secondary Capture, ``summary_compression`` its pixel encoding).
"""

from __future__ import annotations

import logging
import textwrap

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset

from cxr_triage.contract.model_file import ModelMetadata
from cxr_triage.contract.result import Decision, FilmResult

log = logging.getLogger(__name__)

WARNING_TEXT = "AI TRIAGE OUTPUT - NOT FOR DIAGNOSIS"
AMENDED_TEXT = "AMENDED: supersedes the earlier AI result of this study"
MAX_SIDE = 1024       # film panel: longest side at most this (keeps the SC a few MB)
MIN_WIDTH = 640       # and at least this wide, so the text stays legible
_LABELS = {
    Decision.SUSPICIOUS: ("SUSPICIOUS", (255, 80, 60)),
    Decision.LIKELY_NORMAL: ("LIKELY NORMAL", (90, 220, 110)),
    Decision.NOT_ASSESSABLE: ("NOT ASSESSABLE", (200, 200, 200)),
}
_NODULE_COLOURS = {True: (255, 160, 40), False: (230, 230, 230)}  # flagged / not flagged


def film_pixels(source: Dataset) -> np.ndarray | None:
    """The film as the model saw it, or None when it cannot be decoded (the summary then
    shows the result without the film)."""
    if "PixelData" not in source:
        return None
    try:
        from cxr_triage.inference.reader import read_film
    except ImportError:  # reader not installed: plain pydicom display pipeline
        return _pydicom_pixels(source)
    try:
        return np.asarray(read_film(source).pixels, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - any decode failure: summary without the film
        log.warning("summary image without film: %s", type(exc).__name__,
                    extra={"sop_instance_uid": str(source.get("SOPInstanceUID", ""))})
        return None


def shows_heatmap(film: FilmResult, pixels: np.ndarray | None, meta: ModelMetadata) -> bool:
    """Whether the summary draws the film's heatmap: a suspicious film with a heatmap and
    its pixels, from a model whose heatmap passed validation (never otherwise)."""
    return (meta.heatmap_validated and film.decision is Decision.SUSPICIOUS
            and film.heatmap is not None and pixels is not None)


def render_summary(film: FilmResult, pixels: np.ndarray | None,
                   meta: ModelMetadata, *, amended: bool = False) -> np.ndarray:
    """(H, W, 3) uint8: banner with the result over the film (plus the heatmap: see
    :func:`shows_heatmap`); an amended result's banner says so under the warning."""
    panel = _film_panel(pixels)
    heatmap_shown = shows_heatmap(film, pixels, meta)
    if heatmap_shown and film.heatmap is not None:
        panel = _overlay(panel, np.asarray(film.heatmap, dtype=np.float32))
    width = panel.shape[1]
    size = max(14, width // 34)
    font = _font(size)
    small = _font(max(12, int(size * 0.8)))

    label, colour = _LABELS[film.decision]
    lines: list[tuple[str, tuple[int, int, int], ImageFont.FreeTypeFont]] = [
        (WARNING_TEXT, (255, 210, 0), font),
    ]
    if amended:
        lines += [(t, (255, 210, 0), small) for t in _wrap(AMENDED_TEXT, small, width)]
    lines.append((f"Decision: {label}", colour, font))
    if film.decision is Decision.NOT_ASSESSABLE:
        reason = film.reason.value.replace("_", " ") if film.reason else "unknown"
        detail = f"Reason: {reason}" + (f" - {film.reason_detail}" if film.reason_detail else "")
        lines += [(t, (230, 230, 230), small) for t in _wrap(detail, small, width)]
    else:
        score = f"{film.score:.3f}" if film.score is not None else "n/a"
        threshold = f"{film.threshold:.3f}" if film.threshold is not None else "n/a"
        lines.append((f"Score {score} (suspicious if >= {threshold}, operating point "
                      f"{film.operating_point or 'n/a'})", (230, 230, 230), small))
        nodule = nodule_text(film)
        if nodule is not None:
            lines += [(t, _NODULE_COLOURS[bool(film.nodule_flag)], small)
                      for t in _wrap(nodule, small, width)]
    lines.append((f"Model {meta.name} {meta.version}", (230, 230, 230), small))
    footer = ("Heatmap: local evidence of abnormality in the lung fields - not a lesion "
              "outline. " if heatmap_shown else "") + "Every film still needs a radiologist's read."
    footer_lines = _wrap(footer, small, width)

    pad = size // 2
    line_h = int(size * 1.35)
    banner_h = pad * 2 + line_h * len(lines)
    footer_h = pad * 2 + line_h * len(footer_lines)
    canvas = Image.new("RGB", (width, banner_h + panel.shape[0] + footer_h), (0, 0, 0))
    canvas.paste(Image.fromarray(panel), (0, banner_h))
    draw = ImageDraw.Draw(canvas)
    y = pad
    for text, fill, f in lines:
        draw.text((pad, y), text, fill=fill, font=f)
        y += line_h
    y = banner_h + panel.shape[0] + pad
    for text in footer_lines:
        draw.text((pad, y), text, fill=(255, 210, 0), font=small)
        y += line_h
    return np.asarray(canvas, dtype=np.uint8)


def nodule_text(film: FilmResult) -> str | None:
    """The nodule/mass line of the summary, e.g. "Nodule/mass: FLAGGED (score 0.712 >= 0.310)",
    or "Nodule/mass score 0.082 (score only, no flag)" from a model that gives no flag; None when
    the film has no nodule/mass result (a model without that output)."""
    if film.nodule_score is None:
        return None
    score = f"{film.nodule_score:.3f}"
    if film.nodule_flag is None:
        return f"Nodule/mass score {score} (score only, no flag)"
    threshold = f"{film.nodule_threshold:.3f}" if film.nodule_threshold is not None else "n/a"
    if film.nodule_flag:
        return f"Nodule/mass: FLAGGED (score {score} >= {threshold})"
    return f"Nodule/mass: not flagged (score {score} < {threshold})"


def _film_panel(pixels: np.ndarray | None) -> np.ndarray:
    if pixels is None:
        return np.full((MIN_WIDTH, MIN_WIDTH, 3), 40, dtype=np.uint8)
    film = np.ascontiguousarray(pixels, dtype=np.float32)
    h, w = film.shape
    scale = min(MAX_SIDE / max(h, w), 1.0)
    scale = max(scale, MIN_WIDTH / w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # resized first, then clipped and quantised: a detector-sized film is 5-9 Mpixels, the
    # panel at most 1 Mpixel (bench/latency.py)
    small = np.asarray(Image.fromarray(film, mode="F").resize(size, Image.Resampling.BILINEAR))
    grey = (np.clip(np.nan_to_num(small), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _overlay(panel: npt.NDArray[np.uint8], heatmap: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """Blend a jet-coloured heatmap where it is high; the film stays visible elsewhere.

    The heatmap spans the whole film (preprocessing squashes, it does not crop or pad), so
    resizing it to the panel aligns it."""
    from matplotlib import colormaps

    h, w = panel.shape[:2]
    hm = np.clip(np.nan_to_num(heatmap), 0.0, 1.0)
    hm = np.asarray(Image.fromarray(hm, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    colour: npt.NDArray[np.float32] = colormaps["jet"](hm, bytes=True)[..., :3].astype(np.float32)
    alpha: npt.NDArray[np.float32] = (0.55 * np.clip((hm - 0.25) / 0.75, 0.0, 1.0)).astype(np.float32)[..., None]
    out: npt.NDArray[np.float32] = np.clip(panel.astype(np.float32) * (1.0 - alpha) + colour * alpha + 0.5, 0, 255)
    return out.astype(np.uint8)


def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled Aileron at ``size`` (a FreeType font whenever a size is given)."""
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):  # only the sizeless bitmap fallback is not
        raise RuntimeError("Pillow returned a bitmap font for a sized default font")
    return font


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Wrap to the canvas width (measured with the font, not guessed)."""
    avg = max(1.0, font.getlength("abcdefghijklmnopqrstuvwxyz") / 26)
    chars = max(10, int((width - font.size) / avg))
    return textwrap.wrap(text, chars) or [""]


def _pydicom_pixels(source: Dataset) -> np.ndarray | None:
    """Fallback display pipeline (modality LUT, VOI, MONOCHROME1 inverted)."""
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

    try:
        arr = source.pixel_array
        if arr.ndim != 2:
            return None
        arr = apply_voi_lut(apply_modality_lut(arr, source), source).astype(np.float32)
    except Exception:  # noqa: BLE001
        return None
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if source.get("PhotometricInterpretation") == "MONOCHROME1":
        arr = 1.0 - arr
    return arr
