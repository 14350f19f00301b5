"""Read a film (DICOM or PNG/JPEG) into float32 [0, 1], MONOCHROME2 (bone bright).

One reader for the worker and for training on DICOM manifests, so the model sees films
decoded the same way in both. DICOM decoding goes through pydicom's pixel handlers and their
plugins (pylibjpeg-libjpeg, -openjpeg, -rle, pyjpegls); the display pipeline follows PS3.3
C.11: stored values -> Modality LUT (rescale or LUT) -> VOI (VOI LUT Sequence preferred, else
window with its VOI LUT Function) -> [0, 1] -> inverted for MONOCHROME1 / Presentation LUT Shape
INVERSE. Pixel padding is masked out of the intensity range and set to 0 (black). LUTs and
windows are read as dcmtk reads them (:mod:`cxr_triage.inference.dicom_values`), and dcmtk's
``dcm2pnm`` is the reference the tests compare the display pixels with.

Every failure to produce a film raises :class:`NotAssessable` with a coded reason, so a bad
file becomes a "not assessable" result instead of an exception in the node: whatever a library
raises while one film is read becomes ``undecodable`` with the exception in the detail, so no
film can stop a batch (``cxr-triage predict`` on a folder) or a worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom import Dataset

from cxr_triage.contract.result import NotAssessable, NotAssessableReason
from cxr_triage.inference.decoders import CorruptPixelStream, decode_pixels
from cxr_triage.inference.deflated import DeflateBomb, dcmread_bounded
from cxr_triage.inference.dicom_values import (
    LookupTable,
    Window,
    coded_attribute,
    modality_lut,
    read_window,
    rescale,
    voi_lut,
)
from cxr_triage.inference.orientation import apply_turn, header_turn
from cxr_triage.inference.pixel_source import FrameCheck, frame_check, pixel_source
from cxr_triage.inference.resolution import decode_reduced

#: default ceiling on Rows x Columns x Frames x Samples before anything is decoded
DEFAULT_MAX_PIXELS = 40_000_000

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic", ""}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass
class Film:
    """A decoded film. ``dataset`` is the DICOM header (None for PNG/JPEG). ``reduction``: the
    resolution levels left out of a JPEG 2000 film read with a ``floor``
    (:mod:`~cxr_triage.inference.resolution`): its pixels are then ceil(Rows / 2**reduction) x
    ceil(Columns / 2**reduction) (before turning upright), each 2**reduction times the header's
    Pixel Spacing / Imager Pixel Spacing."""

    pixels: np.ndarray                    # float32 (H, W) in [0, 1], MONOCHROME2
    source: str = ""
    dataset: Dataset | None = None
    padding_mask: np.ndarray | None = None  # True where Pixel Padding Value marked a pixel
    reduction: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape


def _undecodable(detail: str) -> NotAssessable:
    return NotAssessable(NotAssessableReason.UNDECODABLE, detail)


def sniff_kind(path: str | Path) -> str:
    """"dicom", "image" (PNG/JPEG) or "unknown", from the file's first bytes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return "unknown"
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
        return "image"
    if head[128:132] == b"DICM":
        return "dicom"
    return "unknown"


def load_dataset(path: str | Path) -> Dataset:
    """Read a DICOM file (Part 10, or a bare dataset without preamble) without decoding pixels.
    A deflated data set is inflated once, in bounded pieces, and refused (undecodable) past
    :data:`~cxr_triage.inference.deflated.DEFAULT_MAX_INFLATED_BYTES` (a deflate bomb)."""
    path = Path(path)
    try:
        ds = dcmread_bounded(path, force=sniff_kind(path) != "dicom")
    except DeflateBomb as exc:
        raise _undecodable(str(exc)) from exc
    except Exception as exc:  # any parser failure (struct, EOF, VR...) is the same
        raise _undecodable(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    # force=True (and a bare preamble) accept any bytes: insist on what every object has
    if "SOPClassUID" not in ds and "PixelData" not in ds:
        raise _undecodable("not a DICOM file (no SOP Class UID, no Pixel Data)")
    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        # a bare dataset without meta header is implicit VR little endian by default (PS3.5 A.1)
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ImplicitVRLittleEndian

        ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def read_film(source: str | Path | Dataset, *, max_pixels: int = DEFAULT_MAX_PIXELS,
              floor: tuple[int, int] | None = None) -> Film:
    """Decode a DICOM file or dataset, or a PNG/JPEG file, into a :class:`Film`.

    ``floor`` (shorter side, longer side in pixels; e.g.
    :data:`~cxr_triage.inference.resolution.WORKER_FLOOR`): a JPEG 2000 / HTJ2K film may be
    decoded at a reduced resolution that keeps at least these sides (``Film.reduction``); None
    (the default): every film at full resolution.

    Raises :class:`NotAssessable` and nothing else (but KeyboardInterrupt/SystemExit): an
    unexpected exception from any library while this film is read is ``undecodable``.
    """
    try:
        return _read_film(source, max_pixels, floor)
    except NotAssessable:
        raise
    except Exception as exc:  # one film must never abort a batch or a worker
        raise _undecodable(f"the film could not be read ({type(exc).__name__}: {exc})") from exc


def _read_film(source: str | Path | Dataset, max_pixels: int, floor: tuple[int, int] | None) -> Film:
    if isinstance(source, Dataset):
        film = decode_dicom(source, max_pixels=max_pixels, floor=floor)
        film.source = str(getattr(source, "filename", "") or "")
        return _upright(film)
    path = Path(source)
    kind = sniff_kind(path)
    if kind == "image" or (kind == "unknown" and path.suffix.lower() in IMAGE_SUFFIXES):
        return Film(read_image_file(path, max_pixels=max_pixels), str(path), None, None)
    film = decode_dicom(load_dataset(path), max_pixels=max_pixels, floor=floor)
    film.source = str(path)
    return _upright(film)


def _upright(film: Film) -> Film:
    """The film turned upright as its Patient Orientation says (:func:`header_turn`); as it is
    when the header is silent (the gate checks those films' pixels)."""
    k = header_turn(film.dataset) if film.dataset is not None else None
    if k:
        film.pixels = apply_turn(film.pixels, k)
        film.padding_mask = apply_turn(film.padding_mask, k) if film.padding_mask is not None else None
    return film


# ----------------------------------------------------------------------------- PNG / JPEG

def read_image_file(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> npt.NDArray[np.float32]:
    """PNG/JPEG film -> float32 [0, 1]. 8-bit / 255, 16-bit / 65535; grey-as-RGB accepted."""
    try:
        with Image.open(path) as opened:
            w, h = opened.size
            if w * h > max_pixels:
                raise _undecodable(f"image declares {w}x{h} pixels, above the {max_pixels} limit")
            img = ImageOps.exif_transpose(opened)
            mode = img.mode
            if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                arr = np.asarray(img, dtype=np.float64)
                scale = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
                return np.clip(arr / scale, 0.0, 1.0).astype(np.float32)
            if mode in ("L", "1"):
                return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
            rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    except NotAssessable:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise _undecodable(f"unreadable image file ({type(exc).__name__}: {exc})") from exc
    spread = np.abs(rgb - rgb.mean(axis=2, keepdims=True)).max()
    if spread > 8:  # beyond JPEG chroma noise: a colour picture, not a radiograph
        raise NotAssessable(NotAssessableReason.COLOR, "colour image (RGB channels differ)")
    grey: npt.NDArray[np.float64] = rgb.mean(axis=2)
    return (grey / 255.0).astype(np.float32)


# ----------------------------------------------------------------------------- DICOM

def _declared_pixels(ds: Dataset) -> int:
    rows = int(ds.get("Rows", 0) or 0)
    cols = int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    return rows * cols * max(frames, 1) * max(samples, 1)


def check_decodable_size(ds: Dataset, max_pixels: int = DEFAULT_MAX_PIXELS) -> FrameCheck:
    """Refuse before decoding what would be too large, what misstates its size, and a cut or
    corrupt JPEG / JPEG-LS codestream (:func:`~cxr_triage.inference.pixel_source.frame_check`,
    whose result is returned). Raises NotAssessable."""
    if "PixelData" not in ds:
        raise NotAssessable(NotAssessableReason.NON_IMAGE, "no Pixel Data")
    declared = _declared_pixels(ds)
    if declared <= 0:
        raise _undecodable("Rows/Columns missing or zero")
    if declared > max_pixels:
        raise _undecodable(f"declares {declared} pixel samples, above the {max_pixels} limit")
    checked = frame_check(ds)
    size = checked.size
    if size is not None and size != (int(ds.Rows), int(ds.Columns)):
        raise _undecodable(
            f"compressed frame is {size[0]}x{size[1]} but the header says {ds.Rows}x{ds.Columns}"
        )
    return checked


def padding_mask(stored: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """Pixels marked by Pixel Padding Value (and Pixel Padding Range Limit), or None."""
    if "PixelPaddingValue" not in ds:
        return None
    value = int(_as_int(ds.PixelPaddingValue, ds))
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None:
        mask = stored == value
    else:
        lo, hi = sorted((value, int(_as_int(limit, ds))))
        mask = (stored >= lo) & (stored <= hi)
    return mask if mask.any() else None


def _as_int(value: Any, ds: Dataset) -> int:
    """US/SS-ambiguous values may arrive as raw bytes; read them with the pixel sign."""
    if isinstance(value, (bytes, bytearray)):
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        return int.from_bytes(bytes(value[:2]), "little", signed=signed)
    return int(value)


def decode_dicom(ds: Dataset, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 floor: tuple[int, int] | None = None) -> Film:
    """DICOM dataset -> :class:`Film` (float32 [0, 1] MONOCHROME2, padding mask or None, as
    stored: not turned upright), reduced to ``floor`` where :func:`read_film` says."""
    try:
        checked = check_decodable_size(ds, max_pixels)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        photometric = coded_attribute(ds, "PhotometricInterpretation")
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except NotAssessable:
        raise
    except Exception as exc:  # values convert lazily: a corrupt VR raises anything
        raise _undecodable(f"malformed image header ({type(exc).__name__}: {exc})") from exc
    if frames > 1:
        raise NotAssessable(NotAssessableReason.MULTI_FRAME, f"{frames} frames")
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise NotAssessable(NotAssessableReason.COLOR,
                            f"photometric interpretation {photometric or 'missing'}")
    reduced = decode_reduced(ds, checked.frame, checked.j2k, floor) if floor is not None else None
    try:
        stored = reduced[0] if reduced else decode_pixels(pixel_source(ds, photometric, checked.trimmed))
    except (KeyboardInterrupt, SystemExit):
        raise
    except CorruptPixelStream as exc:  # the decoder said so, whatever another one would return
        raise _undecodable(f"the pixel stream is corrupt ({exc})") from exc
    except BaseException as exc:  # every decoder failure means the same to triage;
        # Rust decoders (pylibjpeg-rle) panic on some corrupt streams, and pyo3's PanicException
        # is a BaseException: uncaught it killed the node's triage thread
        raise _undecodable(f"pixel data could not be decoded ({type(exc).__name__}: {exc})") from exc
    if stored.ndim != 2:
        raise _undecodable(f"decoded pixel array has shape {stored.shape}")
    try:
        unit, mask = _display_values(stored, ds)
    except NotAssessable:
        raise
    except Exception as exc:  # a header value no LUT step can use, whatever the library raised
        raise _undecodable(f"Modality/VOI LUT not applicable ({type(exc).__name__}: {exc})") from exc
    if not np.isfinite(unit).all():
        raise _undecodable("non-finite values after the Modality/VOI LUT")
    if mask is not None:
        unit[mask] = 0.0
    return Film(unit, "", ds, mask, reduced[1] if reduced else 0)


def _display_values(stored: np.ndarray, ds: Dataset) -> tuple[np.ndarray, np.ndarray | None]:
    """Modality LUT then VOI, rescaled to [0, 1] over the VOI's output range, turned round for
    MONOCHROME1 or an INVERSE Presentation LUT Shape (PS3.3 C.11.6): (float32 (H, W), padding
    mask or None).

    Without any VOI (e.g. DX For Processing), the range of the non-padding pixels is used, as
    viewers do; the model's preprocessing is invariant to that affine choice anyway.

    Every step is a function of the stored value alone, so integer films (at most 65,536
    values) are mapped through a float32 table built once over their stored range: the same
    numbers as applying the steps (in float64) to every pixel, at a fraction of the time on
    detector-sized films (passes over millions of pixels were most of the decode time; see
    bench/decode.py). Without a Modality LUT Sequence the modality step is monotonic (Rescale
    Slope/Intercept of either sign, or none), so the range of the occurring values is that of
    the body's smallest and largest stored value; a Modality LUT Sequence needs every
    occurring value (one counting pass).
    """
    mask = padding_mask(stored, ds)
    voi = _voi(ds)
    inverted = (coded_attribute(ds, "PhotometricInterpretation") == "MONOCHROME1"
                or coded_attribute(ds, "PresentationLUTShape") == "INVERSE")
    if stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2 and stored.size >= 4096:
        first = int(stored.min())
        domain = np.arange(first, int(stored.max()) + 1).astype(stored.dtype)
        if domain.size <= stored.size:
            index = stored if first == 0 else stored.astype(np.int32) - first
            unused = None
            if voi is None:
                # the min-max window may only use values that occur on non-padding pixels
                body = stored[~mask] if mask is not None and not mask.all() else stored
                if modality_lut(ds) is None:
                    unused = np.ones(domain.size, dtype=bool)
                    unused[[int(body.min()) - first, int(body.max()) - first]] = False
                else:
                    offsets = body.ravel() if first == 0 else body.ravel().astype(np.int32) - first
                    unused = np.bincount(offsets, minlength=domain.size) == 0
            table = _display_transform(domain, ds, voi, unused)
            if inverted:
                table = 1.0 - table
            return table.astype(np.float32)[index], mask
    unit = _display_transform(stored, ds, voi, mask)
    return (1.0 - unit if inverted else unit).astype(np.float32), mask


def _voi(ds: Dataset) -> LookupTable | Window | None:
    """The VOI to apply (PS3.3 C.11.2): the first VOI LUT Sequence table, else the first
    applicable window, else None (the film's own range)."""
    return voi_lut(ds) or read_window(ds)


def _modality(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality LUT (PS3.3 C.11.1): the Modality LUT Sequence, else Rescale Slope/Intercept
    (either sign: a negative slope turns the value order round), else the stored values."""
    lut = modality_lut(ds)
    if lut is not None:
        return lut.apply(stored)
    params = rescale(ds)
    if params is None:
        return stored.astype(np.float64)
    slope, intercept = params
    with np.errstate(over="ignore", invalid="ignore"):
        out: np.ndarray = stored.astype(np.float64) * slope + intercept
    if not np.isfinite(out).all():
        raise ValueError(f"Rescale Slope {slope:g} / Intercept {intercept:g} give values out of range")
    return out


def apply_window(values: np.ndarray, window: Window) -> npt.NDArray[np.float64]:
    """The VOI LUT Function of PS3.3 C.11.2.1.2 with output range [0, 1].

    LINEAR (C.11.2.1.2.1): below c - 0.5 - (w - 1) / 2 -> 0, above c - 0.5 + (w - 1) / 2 -> 1,
    else ((x - (c - 0.5)) / (w - 1) + 0.5). LINEAR_EXACT (C.11.2.1.3.2): the same with c and w
    as given. SIGMOID (C.11.2.1.3.1): 1 / (1 + exp(-4 (x - c) / w)). The output ends do not
    depend on the Modality LUT's sign, so a negative Rescale Slope windows like any other.
    """
    x = values.astype(np.float64)
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        with np.errstate(over="ignore"):
            out: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
        return out
    if window.function == "LINEAR":
        c, w = c - 0.5, w - 1.0
    if w <= 0.0:  # LINEAR with width 1: a threshold at c - 0.5
        return (x > c).astype(np.float64)
    return np.clip((x - c) / w + 0.5, 0.0, 1.0)


def _display_transform(stored: np.ndarray, ds: Dataset, voi: LookupTable | Window | None,
                       mask: np.ndarray | None) -> np.ndarray:
    """Modality LUT, VOI and [0, 1] for ``stored`` values; ``mask`` marks values left out of
    the film's own range (padding) when there is no VOI."""
    modality = _modality(stored, ds)
    if isinstance(voi, Window):
        return apply_window(modality, voi)
    if isinstance(voi, LookupTable):
        out = voi.apply(modality).astype(np.float64)
        lo, hi = float(voi.entries.min()), float(voi.entries.max())
    else:
        out = modality.astype(np.float64)
        body = out[~mask] if mask is not None and not mask.all() else out
        lo, hi = float(body.min()), float(body.max())
    if hi <= lo:
        return np.zeros(out.shape, dtype=np.float64)
    return np.clip((out - lo) / (hi - lo), 0.0, 1.0)
