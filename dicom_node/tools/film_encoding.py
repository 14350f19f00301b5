"""Transfer syntaxes of the test films and their encoders (library codecs only).

pydicom's encoders (RLE, JPEG-LS via pyjpegls, JPEG 2000 via pylibjpeg-openjpeg), Pillow for JPEG
Baseline, dcmtk's ``dcmcjpeg`` for JPEG Lossless / Extended, pydicom's writer for deflate. Lossy
syntaxes set Lossy Image Compression (0028,2110) and its method (PS3.3 C.7.6.1.1.5).
Used by :mod:`film_to_dicom` (the film factory) and :mod:`wrap` (its command line).
"""

from __future__ import annotations

import io
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

NATIVE_SYNTAXES = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
#: pydicom's own encoders (``Dataset.compress``)
PYDICOM_ENCODED = (RLELossless, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000)
#: dcmtk ``dcmcjpeg`` flags per syntax (pydicom cannot encode these)
DCMCJPEG_FLAGS: dict[str, list[str]] = {
    JPEGLosslessSV1: ["+e1"],
    JPEGLossless: ["+el", "+sv", "6"],
    JPEGExtended12Bit: ["+ee", "+q", "95", "+sr"],  # +sr: keep the stored range (no stretch)
}
LOSSLESS_SYNTAXES = (*NATIVE_SYNTAXES, RLELossless, JPEGLSLossless, JPEG2000Lossless,
                     JPEGLosslessSV1, JPEGLossless)
#: every transfer syntax :func:`png_to_dicom` can write
SUPPORTED_SYNTAXES = (*NATIVE_SYNTAXES, *PYDICOM_ENCODED, JPEGBaseline8Bit, *DCMCJPEG_FLAGS)

DCMCJPEG = "/usr/bin/dcmcjpeg"


def syntax_from_text(text: str) -> UID:
    """A supported transfer syntax from its UID or its pydicom keyword (``JPEGBaseline8Bit``,
    ``JPEG2000Lossless``, ``ExplicitVRLittleEndian``...); ValueError listing them otherwise."""
    for ts in map(UID, SUPPORTED_SYNTAXES):
        if text in (str(ts), ts.keyword, ts.name):
            return ts
    names = ", ".join(UID(ts).keyword for ts in SUPPORTED_SYNTAXES)
    raise ValueError(f"unsupported transfer syntax {text!r}: one of {names} (or its UID)")


def encode_pixels(ds: Dataset, stored: np.ndarray, tsyntax: UID, jpeg_quality: int) -> None:
    """Put ``stored`` (rows, columns) into ``ds`` as Pixel Data in ``tsyntax``.

    ``tsyntax`` is one of :data:`SUPPORTED_SYNTAXES`; ``jpeg_quality`` (1-95) is used by JPEG
    Baseline only. Sets Lossy Image Compression as it goes; RuntimeError when dcmcjpeg fails.
    """
    lossy = tsyntax in (JPEGBaseline8Bit, JPEGExtended12Bit, JPEG2000, JPEGLSNearLossless)
    if tsyntax in NATIVE_SYNTAXES:
        ds.file_meta.TransferSyntaxUID = tsyntax
    elif tsyntax in PYDICOM_ENCODED:
        j2k_psnr: list[float] | None = None  # None: pydicom's default (lossless)
        jls_error: int | None = None
        if tsyntax == JPEG2000:
            j2k_psnr = [80]
        elif tsyntax == JPEGLSNearLossless:
            jls_error = 2
        ds.compress(tsyntax, stored, generate_instance_uid=False, jls_error=jls_error, j2k_psnr=j2k_psnr)
    elif tsyntax == JPEGBaseline8Bit:
        buf = io.BytesIO()
        Image.fromarray(stored.astype(np.uint8), mode="L").save(
            buf, format="JPEG", quality=jpeg_quality, subsampling=0
        )
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = tsyntax
    else:
        _dcmcjpeg(ds, tsyntax)
    if lossy:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = (
            "ISO_15444_1" if tsyntax == JPEG2000 else
            "ISO_14495_1" if tsyntax == JPEGLSNearLossless else "ISO_10918_1"
        )


def _dcmcjpeg(ds: Dataset, tsyntax: UID) -> None:
    """JPEG Lossless / Extended through dcmtk (no Python encoder exists for them)."""
    with tempfile.TemporaryDirectory(prefix="cxrt-jpeg-") as tmp:
        src, dst = Path(tmp) / "in.dcm", Path(tmp) / "out.dcm"
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(src, enforce_file_format=True)
        proc = subprocess.run([DCMCJPEG, *DCMCJPEG_FLAGS[tsyntax], str(src), str(dst)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"dcmcjpeg failed ({proc.returncode}): {proc.stderr.strip()}")
        out = dcmread(dst)
    ds.PixelData = out.PixelData
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = out.file_meta.TransferSyntaxUID
    for keyword in ("LossyImageCompression", "LossyImageCompressionRatio",
                    "LossyImageCompressionMethod", "DerivationDescription"):
        if keyword in out:
            ds[keyword] = out[keyword]
