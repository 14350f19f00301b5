"""Films with the header quirks vendors ship (issue 15), built from a shared NIH PNG.

Each builder wraps a real film with :func:`png_to_dicom` (made-up patient details) and then
writes the quirk exactly as the vendor would: a VOI LUT Descriptor encoded with the "wrong" VR,
an entry count of 0, LUT Data shorter than the descriptor says, 8-bit entries packed two to a
word, a negative Rescale Slope, a VOI LUT Function... Stored values are placed where the quirk
matters (e.g. inside a LUT that starts at 32768), so a reader that gets the quirk wrong shows a
different picture, not merely a different scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from cxr_triage.dicom_node.tools.film_to_dicom import load_film_image, png_to_dicom

#: made-up patient details (no real person)
PATIENT = dict(patient_name="Quirk^Fifteen", patient_id="QRK-0015", patient_age="052Y", patient_sex="F")


def set_stored(ds: Dataset, film: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Replace native Pixel Data by ``lo + film * (hi - lo)`` (film in [0, 1], bright = high)."""
    signed = int(ds.PixelRepresentation) == 1
    dtype = (np.int16 if signed else np.uint16) if int(ds.BitsAllocated) == 16 else (np.int8 if signed else np.uint8)
    stored = (lo + np.rint(film * (hi - lo))).astype(np.int64).astype(dtype)
    ds.PixelData = stored.tobytes()
    return stored


def sigmoid_entries(n: int, bits: int) -> np.ndarray:
    """A smooth increasing LUT of ``n`` entries spanning 0 .. 2**bits - 1."""
    x = np.linspace(-3.0, 3.0, n)
    y = 1.0 / (1.0 + np.exp(-x))
    y = (y - y[0]) / (y[-1] - y[0])
    return np.rint(y * ((1 << bits) - 1)).astype(np.int64)


def voi_lut_film(
    png: str | Path,
    *,
    first: int,
    count: int,
    descriptor_vr: str = "US",
    bits_stored: int = 16,
    signed: bool = False,
    lut_bits: int = 16,
    data_entries: int | None = None,
    data_vr: str = "OW",
    packed_8bit: bool = False,
    rescale: tuple[float, float] | None = None,
    stored_span: tuple[int, int] | None = None,
    sop_class: str = "DX_PRES",
) -> Dataset:
    """A film with one VOI LUT Sequence item, its descriptor written word by word.

    first/count: the first value mapped and the number of entries the descriptor states
    (count 65536 is written as 0, PS3.3 C.11.2.1.1). descriptor_vr: "US" or "SS", the VR the
    descriptor is encoded with (the first value is wrapped to fit it, as a vendor's writer does).
    data_entries: how many entries LUT Data really holds (default: count). packed_8bit: 8-bit
    entries two to a 16-bit word (OW). rescale: (slope, intercept), else no rescale at all.
    stored_span: stored value range the film occupies (default: the LUT's input range).
    """
    ds = png_to_dicom(png, sop_class=sop_class, bits_stored=bits_stored, signed=signed,  # type: ignore[arg-type]
                      window=None, **PATIENT)
    for kw in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
        if kw in ds:
            delattr(ds, kw)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = rescale[0], rescale[1], "US"
    slope, intercept = rescale or (1.0, 0.0)
    lo, hi = stored_span or tuple(sorted((round((first - intercept) / slope),
                                          round((first + count - 1 - intercept) / slope))))
    set_stored(ds, load_film_image(png), int(lo), int(hi))

    def word(v: int) -> int:
        v &= 0xFFFF
        return v - 0x10000 if descriptor_vr == "SS" and v >= 0x8000 else v

    n_data = data_entries or count
    entries = sigmoid_entries(n_data, lut_bits)
    item = Dataset()
    item.add_new(0x00283002, descriptor_vr, [word(count if count < 65536 else 0), word(first), lut_bits])
    item.LUTExplanation = "quirk test LUT"
    if packed_8bit:
        raw = entries.astype(np.uint8).tobytes()
        item.add_new(0x00283006, "OW", raw + b"\x00" * (len(raw) % 2))
    elif data_vr == "OW":
        item.add_new(0x00283006, "OW", entries.astype("<u2").tobytes())
    else:
        item.add_new(0x00283006, "US", [int(v) for v in entries])
    ds.VOILUTSequence = Sequence([item])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def window_film(
    png: str | Path,
    *,
    center: float,
    width: float,
    function: str | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    sop_class: str = "CR",
) -> Dataset:
    """A film with Rescale Slope/Intercept, one window and (optionally) a VOI LUT Function."""
    ds = png_to_dicom(png, sop_class=sop_class, bits_stored=bits_stored, photometric=photometric,  # type: ignore[arg-type]
                      rescale_slope=slope, rescale_intercept=intercept, window=(center, width), **PATIENT)
    if function is not None:
        ds.VOILUTFunction = function
    return ds
