"""A picture of the result that any PACS viewer shows: one Secondary Capture per film.

Why Secondary Capture and not a GSPS: every viewer displays an SC image, while presentation
states are applied inconsistently (often not at all, or only on request), and a colour heatmap
would need a Blending/Colour Softcopy PS that few viewers support. The cost, accepted: the
film's pixels are duplicated (downscaled to at most 1024 px) and the text is burned in, so
the image carries Burned In Annotation YES and its own series, "AI triage summary", whose
description says it is not for diagnosis. Enabled by ``[delivery] summary_image``.

The image is compressed (``[delivery] summary_image_compression``, :data:`COMPRESSIONS`): by
default lossless JPEG-LS (about 0.8 MB for a 1024 x 1284 RGB summary instead of 3.9 MB
uncompressed); RLE is lossless too; ``jpeg`` is JPEG Baseline, lossy, with the lossy history
declared (Lossy Image Compression 01, method ISO_10918_1 and ratio, after the source film's own
lossy steps). A destination that does not accept the syntax gets it decompressed.

Each image shows the film (as the model read it: MONOCHROME2, VOI applied), a banner
"AI TRIAGE OUTPUT - NOT FOR DIAGNOSIS", the decision, score, threshold and operating point (or
the not-assessable reason), the nodule/mass flag with its score and threshold (models with
that output), the model name and version, and for suspicious films the heatmap, but only
when the model's heatmap passed validation (``ModelMetadata.heatmap_validated``).
"""

from __future__ import annotations

import logging
import textwrap
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from cxr_triage.contract.model_file import ModelMetadata
from cxr_triage.contract.result import Decision, FilmResult, StudyResult
from cxr_triage.dicom_node.results.sr import (
    AMENDED_SUFFIX,
    SOFTWARE_NAME,
    Amendment,
    add_ihe_algorithm_equipment,
    header_description,
    set_series_datetime,
    software_versions,
    source_headers,
    study_reasons,
)

if TYPE_CHECKING:
    from cxr_triage.config import Config

log = logging.getLogger(__name__)

SERIES_DESCRIPTION = "AI triage summary - not for diagnosis"  # decision unknown
SERIES_PREFIX = "AI triage summary"  # + ": DECISION (reason) - not for diagnosis"
DEFAULT_SERIES_NUMBER = 991
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
#: ``[delivery] summary_image_compression`` -> (transfer syntax, photometric interpretation,
#: lossy compression method or None for a lossless one)
COMPRESSIONS: dict[str, tuple[str, str, str | None]] = {
    "jpeg-ls": (JPEGLSLossless, "RGB", None),
    "rle": (RLELossless, "RGB", None),
    "jpeg": (JPEGBaseline8Bit, "YBR_FULL_422", "ISO_10918_1"),
    "none": (ExplicitVRLittleEndian, "RGB", None),
}
DEFAULT_COMPRESSION = "jpeg-ls"
_LOSSY_METHOD = {
    JPEGBaseline8Bit: "ISO_10918_1", JPEGExtended12Bit: "ISO_10918_1",
    JPEG2000: "ISO_15444_1", HTJ2K: "ISO_15444_15", JPEGLSNearLossless: "ISO_14495_1",
}


def build_summary_images(
    study: StudyResult,
    sources: Sequence[Dataset],
    meta: ModelMetadata,
    *,
    series_uid: str | None = None,
    series_number: int = DEFAULT_SERIES_NUMBER,
    amends: Amendment | None = None,
    compression: str = DEFAULT_COMPRESSION,
) -> list[hd.sc.SCImage]:
    """One summary image per film of the study, all in one new series; an amended result's
    (``amends``) continue the replaced result's series after its last Instance Number, say
    "amended" in the Series Description and carry an AMENDED line."""
    by_uid = {str(s.SOPInstanceUID): s for s in sources}
    prefix, first = SERIES_PREFIX, 1
    if amends is not None and amends.sc_series_uid:
        series_uid, first = amends.sc_series_uid, amends.sc_last_instance_number + 1
    if amends is not None:
        prefix = SERIES_PREFIX + AMENDED_SUFFIX
    series_uid = series_uid or hd.UID()
    # one series per study: its description carries the study's decision
    description = header_description(prefix, study.decision, study_reasons(study))
    images = []
    for number, film in enumerate(study.films, start=first):
        source = by_uid.get(str(film.sop_instance_uid))
        if source is None:
            raise ValueError(f"film without a matching source dataset: {film.sop_instance_uid}")
        images.append(
            build_summary_image(film, source, meta, series_uid=series_uid,
                                series_number=series_number, instance_number=number,
                                series_description=description, amended=amends is not None,
                                compression=compression)
        )
    return images


def summary_images_if_enabled(
    cfg: Config,
    study: StudyResult,
    sources: Sequence[Dataset],
    meta: ModelMetadata,
    **kwargs: Any,
) -> list[hd.sc.SCImage]:
    """``build_summary_images`` when ``[delivery] summary_image`` is on, else nothing."""
    if not cfg.delivery.summary_image:
        return []
    kwargs.setdefault("compression", cfg.delivery.summary_image_compression)
    return build_summary_images(study, sources, meta, **kwargs)


def build_summary_image(
    film: FilmResult,
    source: Dataset,
    meta: ModelMetadata,
    *,
    series_uid: str,
    instance_number: int = 1,
    series_number: int = DEFAULT_SERIES_NUMBER,
    sop_instance_uid: str | None = None,
    pixels: np.ndarray | None = None,
    series_description: str | None = None,
    amended: bool = False,
    compression: str = DEFAULT_COMPRESSION,
) -> hd.sc.SCImage:
    """The Secondary Capture for one film. ``pixels`` (float32 [0, 1] MONOCHROME2) skips
    decoding the source again when the caller still has them. ``series_description``
    defaults to one carrying this film's decision (a study's series carries the study's).
    ``compression``: a key of :data:`COMPRESSIONS` (ValueError otherwise)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"summary image compression {compression!r} is not one of {', '.join(COMPRESSIONS)}")
    transfer_syntax, photometric, lossy_method = COMPRESSIONS[compression]
    if pixels is None:
        pixels = film_pixels(source)
    rgb = render_summary(film, pixels, meta, amended=amended)
    header = source_headers([source])[0]
    orientation = _orientation(source)
    with warnings.catch_warnings():
        # highdicom's person-name warnings quote the patient's name: keep PHI out of logs.
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=header,
            pixel_array=rgb,
            photometric_interpretation=photometric,
            transfer_syntax_uid=transfer_syntax,
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid or hd.UID(),
            instance_number=instance_number,
            manufacturer=meta.manufacturer or SOFTWARE_NAME,
            patient_orientation=orientation or ("L", "F"),
            series_description=series_description or header_description(
                SERIES_PREFIX, film.decision, [film.reason] if film.reason else []),
            manufacturer_model_name=SOFTWARE_NAME,
            software_versions=f"{meta.name} {meta.version}",
        )
    image.add_new(0x00181020, "LO", software_versions(meta))  # Software Versions: package and model, as in the SR
    add_ihe_algorithm_equipment(image, meta)
    if orientation is None:
        # Type 2: unknown, rather than a guess (highdicom set it, typed as a list of values)
        image["PatientOrientation"].value = ""
    # Laterality (Type 2C, only for paired body parts): the source's when it has one, never
    # an empty value (the chest is unpaired).
    body_part = str(source.get("BodyPartExamined", "") or "")
    if body_part:
        image.BodyPartExamined = body_part
    if str(source.get("Laterality", "") or ""):
        image.Laterality = source.Laterality
    elif "Laterality" in image:
        del image.Laterality
    set_series_datetime(image)
    image.BurnedInAnnotation = "YES"
    image.DerivationDescription = (
        f"AI triage summary of the referenced film by {meta.name} {meta.version}; "
        + ("resampled, text and heatmap burned in" if shows_heatmap(film, pixels, meta)
           else "resampled, text burned in")
    )
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    image.SourceImageSequence = [ref]
    _copy_lossy_history(source, image)
    if lossy_method is not None:
        _add_lossy_step(image, lossy_method, rgb.nbytes)
    return image


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
    """The nodule/mass line of the summary, e.g. "Nodule/mass: FLAGGED (score 0.712 >= 0.310)";
    None when the film has no nodule/mass result (a model without that output)."""
    if film.nodule_flag is None or film.nodule_score is None:
        return None
    score = f"{film.nodule_score:.3f}"
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


def _orientation(source: Dataset) -> tuple[str, str] | None:
    value = source.get("PatientOrientation")
    if value is not None and not isinstance(value, str) and len(value) == 2:
        return str(value[0]), str(value[1])
    return None


def _copy_lossy_history(source: Dataset, image: Dataset) -> None:
    """A derived image of a lossy film is lossy too (PS3.3 C.7.6.1.1.5)."""
    file_meta = getattr(source, "file_meta", None)
    ts = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if str(source.get("LossyImageCompression", "")) == "01":
        image.LossyImageCompression = "01"
        if "LossyImageCompressionMethod" in source:
            image.LossyImageCompressionMethod = source.LossyImageCompressionMethod
        if "LossyImageCompressionRatio" in source:
            image.LossyImageCompressionRatio = source.LossyImageCompressionRatio
    elif ts in _LOSSY_METHOD:
        image.LossyImageCompression = "01"
        image.LossyImageCompressionMethod = _LOSSY_METHOD[ts]


def _add_lossy_step(image: Dataset, method: str, uncompressed_bytes: int) -> None:
    """Declare this image's own lossy compression after the film's (PS3.3 C.7.6.1.1.5: one
    method, and one ratio, per successive lossy step)."""
    methods = _values(image.get("LossyImageCompressionMethod"))
    ratios = _values(image.get("LossyImageCompressionRatio"))
    compressed = len(image.PixelData)
    ratio = f"{uncompressed_bytes / max(1, compressed):.2f}"
    image.LossyImageCompression = "01"
    image.LossyImageCompressionMethod = [*methods, method]
    if len(ratios) == len(methods):       # else the film's steps have no ratios: none at all
        image.LossyImageCompressionRatio = [*ratios, ratio]
    elif "LossyImageCompressionRatio" in image:
        del image.LossyImageCompressionRatio


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return [value] if isinstance(value, (str, float, int)) else list(value)


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
