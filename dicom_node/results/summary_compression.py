"""The summary image's pixel encoding (``[delivery] summary_image_compression``) and its
lossy-compression history.

By default lossless JPEG-LS (about 0.8 MB for a 1024 x 1284 RGB summary instead of 3.9 MB
uncompressed); RLE is lossless too; ``jpeg`` is JPEG Baseline, lossy, with the lossy history
declared (Lossy Image Compression 01, method ISO_10918_1 and ratio, after the source film's
own lossy steps: PS3.3 C.7.6.1.1.5). A destination that does not accept the syntax gets it
decompressed (the deliverer).
"""

from __future__ import annotations

from typing import Any

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


def compression_syntax(name: str) -> tuple[str, str, str | None]:
    """(transfer syntax, photometric interpretation, lossy method or None) of a
    :data:`COMPRESSIONS` key; ValueError for any other name."""
    if name not in COMPRESSIONS:
        raise ValueError(f"summary image compression {name!r} is not one of {', '.join(COMPRESSIONS)}")
    return COMPRESSIONS[name]


def copy_lossy_history(source: Dataset, image: Dataset) -> None:
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


def add_lossy_step(image: Dataset, method: str, uncompressed_bytes: int) -> None:
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
