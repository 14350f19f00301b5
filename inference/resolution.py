"""A JPEG 2000 film decoded at a reduced resolution: the size its consumers need, not more.

A JPEG 2000 or HTJ2K codestream (ISO/IEC 15444-1, 15444-15) holds the film as a wavelet
pyramid: with its top ``r`` resolution levels left out, a decoder rebuilds the film at
ceil(side / 2**r) (15444-1 B.5) from the low-pass band alone and skips the entropy decoding of
the discarded sub-bands, most of a decode's time (2500 x 2048 lossless film, OpenJPEG on 2
threads: ~0.5 s in full, ~0.15 s with one level left out). OpenJPEG offers it as
``opj_set_decoded_resolution_factor``; of the installed bindings only Pillow's JPEG 2000 plugin
(OpenJPEG 2.5, ``Jpeg2KImageFile.reduce``) exposes it and reads from memory (imagecodecs'
``jpeg2k_decode`` and pylibjpeg-openjpeg decode in full only). OpenJPEG takes its thread count
from ``OPJ_NUM_THREADS`` when it creates a decoder (Pillow sets none): :data:`J2K_THREADS`
unless the environment says otherwise.

The stored values of a reduced film are the low-pass band of the codestream's own wavelet
(5/3 or 9/7), in the stored value range (OpenJPEG clips to the precision): a smoothed,
decimated film, to which the Modality LUT and VOI apply as to the full one.

Only a film the caller asks for is reduced (``read_film(..., floor=...)``), and only when it
is safe to: one unsigned component of at most 16 bits, image origin (0, 0), no Pixel Padding
Value (the low-pass band smears padding into the film's edge, so the mask would miss it).
Anything else, or any failure of the reduced decode, returns None and the film is decoded in
full by :func:`~cxr_triage.inference.decoders.decode_pixels` (which decides on a corrupt stream).
"""

from __future__ import annotations

import io
import logging
import os

import numpy as np
from PIL import Jpeg2KImagePlugin
from pydicom import Dataset

from cxr_triage.inference.codestreams import J2kHeader
from cxr_triage.inference.decoders import J2K_THREADS

LOG = logging.getLogger(__name__)

#: (shorter side, longer side) the worker's film needs at least: the model's harmonised input
#: (224 px, ``PreprocessSpec.harmonise_size``) with 2x margin and the gate's default
#: ``min_image_size`` (256) on the shorter side; the summary image's film panel (1024 px on its
#: longer side, ``results/summary_render.MAX_SIDE``) on the longer one
WORKER_FLOOR = (448, 1024)

os.environ.setdefault("OPJ_NUM_THREADS", str(J2K_THREADS))


def reduction_level(rows: int, cols: int, levels: int, floor: tuple[int, int]) -> int:
    """The most resolution levels (0 to ``levels``) that can be left out of a ``rows`` x
    ``cols`` film with its sides still at least ``floor`` (shorter, longer)."""
    short, long_ = floor
    level = 0
    while level < levels:
        r, c = -(-rows // 2 ** (level + 1)), -(-cols // 2 ** (level + 1))
        if min(r, c) < short or max(r, c) < long_:
            break
        level += 1
    return level


def _reducible(ds: Dataset, header: J2kHeader | None) -> bool:
    """One unsigned greyscale component of 2 to 16 bits from (0, 0), no padding value."""
    return (header is not None and header.levels is not None and header.components == 1
            and not header.signed and 2 <= header.precision <= 16 and header.origin_zero
            and int(ds.get("PixelRepresentation", 0) or 0) == 0 and "PixelPaddingValue" not in ds)


def decode_reduced(ds: Dataset, frame: bytes | None, header: J2kHeader | None,
                   floor: tuple[int, int]) -> tuple[np.ndarray, int] | None:
    """(stored values at the reduced size, the levels left out) for ``ds``'s JPEG 2000 or HTJ2K
    ``frame`` (its first, with its main ``header``), or None when it is not to be reduced (see
    the module docstring; level 0 included) or the reduced decode fails. The array is uint8 for
    at most 8 bits, else uint16, of shape ceil(rows / 2**level) x ceil(cols / 2**level)."""
    if frame is None or header is None or header.levels is None or not _reducible(ds, header):
        return None
    level = reduction_level(header.rows, header.cols, header.levels, floor)
    if level == 0:
        return None
    try:
        stored = _pillow_decode(frame, level, header.precision)
    except Exception as exc:  # noqa: BLE001 - any failure: the full decode decides, names corruption
        LOG.debug("reduced JPEG 2000 decode failed (%s: %s); decoding in full", type(exc).__name__, exc)
        return None
    expected = (-(-header.rows // 2 ** level), -(-header.cols // 2 ** level))
    if stored.shape != expected:
        LOG.debug("reduced JPEG 2000 decode gave %s, not %s; decoding in full", stored.shape, expected)
        return None
    return stored, level


def _pillow_decode(frame: bytes, level: int, precision: int) -> np.ndarray:
    """One greyscale JPEG 2000 codestream of ``precision`` bits with ``level`` resolution levels
    left out, by Pillow's OpenJPEG, as stored values (Pillow shifts 9 to 15-bit samples up to 16
    bits: shifted back). Raises OSError (a stream OpenJPEG refused) or ValueError (not grey)."""
    with Jpeg2KImagePlugin.Jpeg2KImageFile(io.BytesIO(frame)) as image:
        image.reduce = level
        image.load()
        if image.mode not in ("L", "I;16"):
            raise ValueError(f"Pillow decoded a {image.mode} image")
        stored = np.asarray(image)
    if image.mode == "I;16" and precision < 16:
        stored = stored >> (16 - precision)
    return stored
