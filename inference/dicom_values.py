"""Header values as the reader and the gate compare them: one reading for both.

* Code Strings (VR CS, PS3.5 6.2) and coded entries (PS3.3 8.8): vendors pad with spaces or
  NULs and some write lower case; :func:`coded_string` is the one normalisation.
* Lookup tables (Modality LUT, PS3.3 C.11.1.1.1; VOI LUT, C.11.2.1.1) read the way dcmtk reads
  them (``dcmimgle`` ``DiLookupTable``): the descriptor is three 16-bit words whatever VR it was
  encoded with, an entry count of 0 means 65536, the first value mapped is US or SS as the
  standard's rules say (not as the encoded VR says), and when LUT Data holds another number of
  entries than the descriptor, the data wins.
* Windows (C.11.2.1.2): centre, width and VOI LUT Function, or None when no viewer could apply
  them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRBigEndian

#: VOI LUT Function (0028,1056) defined terms (PS3.3 C.11.2.1.3)
VOI_LUT_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


# ----------------------------------------------------------------------------- coded strings

def coded_string(value: object) -> str:
    """A Code String as compared: surrounding spaces and NUL padding removed, upper case.

    None gives ""; multi-valued elements give their values joined by a backslash (as encoded,
    PS3.5 6.4); bytes (an element whose VR was never resolved) are read as ISO 646."""
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(coded_string(v) for v in value)
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    return str(value).strip(" \x00\t\r\n").upper()


def coded_attribute(ds: Dataset, keyword: str) -> str:
    """:func:`coded_string` of ``ds.<keyword>``; "" when absent or empty."""
    return coded_string(ds.get(keyword, None))


@dataclass(frozen=True)
class CodedEntry:
    """One item of a code sequence (PS3.3 Table 8.8-1), normalised for comparison."""

    value: str            # Code Value, else Long Code Value, else URN Code Value
    scheme: str           # Coding Scheme Designator
    meaning: str          # Code Meaning as written (only for messages)

    def describe(self) -> str:
        return f"{self.value or '?'} ({self.scheme or '?'}) {self.meaning!r}"


def coded_entries(ds: Dataset, keyword: str) -> list[CodedEntry]:
    """The items of code sequence ``keyword`` in ``ds`` (empty when absent)."""
    out = []
    for item in ds.get(keyword, None) or []:
        value = next((coded_string(item.get(k)) for k in ("CodeValue", "LongCodeValue", "URNCodeValue")
                      if item.get(k)), "")
        out.append(CodedEntry(value, coded_string(item.get("CodingSchemeDesignator")),
                              str(item.get("CodeMeaning", "") or "").strip(" \x00")))
    return out


# ----------------------------------------------------------------------------- lookup tables

@dataclass(frozen=True)
class LookupTable:
    """A Modality or VOI LUT: input ``first`` maps to ``entries[0]``; inputs below ``first``
    map to the first entry, inputs past the end to the last one (PS3.3 C.11.2.1.1)."""

    first: int
    entries: npt.NDArray[np.int64]
    bits: int          # third descriptor value: informational (the display uses min..max)

    def apply(self, values: np.ndarray) -> npt.NDArray[np.int64]:
        """Entries for ``values`` (integers, or floats rounded to the nearest integer)."""
        last = self.first + self.entries.size - 1
        if values.dtype.kind in "iu":
            index = values.astype(np.int64) - self.first
        else:  # clamped before the cast: a float beyond int64 has no integer to become
            index = np.clip(np.rint(values), self.first, last).astype(np.int64) - self.first
        np.clip(index, 0, self.entries.size - 1, out=index)
        out: npt.NDArray[np.int64] = self.entries[index]
        return out


def _little_endian(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return syntax != ExplicitVRBigEndian


def _words(value: Any, ds: Dataset) -> list[int]:
    """16-bit words of a US/SS/OW value, whichever of those it was read as."""
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)[: len(value) // 2 * 2]
        dtype = "<u2" if _little_endian(ds) else ">u2"
        return [int(v) for v in np.frombuffer(raw, dtype=dtype)]
    if isinstance(value, (MultiValue, list, tuple)):
        return [int(v) & 0xFFFF for v in value]
    return [int(value) & 0xFFFF]


def _lut_entries(value: Any, ds: Dataset, count: int) -> npt.NDArray[np.int64]:
    """LUT Data (US or OW) as unsigned entries; 8-bit tables packed two to a word are unpacked
    (dcmtk: a word count of (entries + 1) / 2 means 8 bits allocated)."""
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
        if len(raw) // 2 != count and len(raw) // 2 == (count + 1) // 2:
            return np.frombuffer(raw, dtype=np.uint8)[:count].astype(np.int64)
        return np.asarray(_words(raw, ds), dtype=np.int64)
    return np.asarray(_words(value, ds), dtype=np.int64)


def read_lut(item: Dataset, ds: Dataset, *, signed_first: bool) -> LookupTable | None:
    """The LUT in one Modality/VOI LUT Sequence item, or None when it has no usable table.

    PS3.3 C.11.2.1.1: descriptor = (entries, first value mapped, bits per entry); entries 0
    means 65536 (2^16). The first value mapped is read as SS when ``signed_first`` and as US
    otherwise, whatever VR the file encoded it with (dcmtk does the same)."""
    if "LUTDescriptor" not in item or "LUTData" not in item:
        return None
    words = _words(item["LUTDescriptor"].value, ds)
    if len(words) < 3:
        return None
    count = words[0] or 65536
    first = words[1] - 0x10000 if signed_first and words[1] >= 0x8000 else words[1]
    entries = _lut_entries(item["LUTData"].value, ds, count)
    if entries.size == 0:
        return None
    # dcmtk: a descriptor that disagrees with the data ("invalid NumberOfTableEntries") is
    # overruled by the data, so the table is never indexed past its end
    return LookupTable(first, entries[:65536], words[2])


def stored_value_range(ds: Dataset) -> tuple[int, int]:
    """Smallest and largest value Bits Stored and Pixel Representation allow (PS3.5 8.1.1)."""
    bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 16) or 16)
    bits = min(max(bits, 1), 32)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def rescale(ds: Dataset) -> tuple[float, float] | None:
    """(slope, intercept) of the Modality LUT Module's rescale (PS3.3 C.11.1), or None when
    neither is given. A missing slope is 1, a missing intercept 0."""
    slope, intercept = ds.get("RescaleSlope", None), ds.get("RescaleIntercept", None)
    if slope in (None, "") and intercept in (None, ""):
        return None
    s = float(slope) if slope not in (None, "") else 1.0
    i = float(intercept) if intercept not in (None, "") else 0.0
    if not (math.isfinite(s) and math.isfinite(i)):
        raise ValueError(f"Rescale Slope/Intercept {slope!r}/{intercept!r} are not finite numbers")
    return s, i


def modality_lut(ds: Dataset) -> LookupTable | None:
    """The Modality LUT Sequence's table (first value mapped: US or SS as Pixel Representation
    says, PS3.3 C.11.1.1.1), or None."""
    seq = ds.get("ModalityLUTSequence", None)
    if not seq:
        return None
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    return read_lut(seq[0], ds, signed_first=signed)


def modality_output_signed(ds: Dataset) -> bool:
    """Whether the Modality LUT's output may be negative, which is what decides US or SS for the
    VOI LUT's first value mapped (PS3.3 C.11.2.1.1): the Pixel Representation when there is no
    rescale or Modality LUT; SS when the rescaled range of the stored values may be negative; US
    after a Modality LUT Sequence (its entries are unsigned)."""
    if modality_lut(ds) is not None:
        return False
    lo, hi = stored_value_range(ds)
    params = rescale(ds)
    if params is None:
        return lo < 0
    slope, intercept = params
    return min(lo * slope + intercept, hi * slope + intercept) < 0


def voi_lut(ds: Dataset, index: int = 0) -> LookupTable | None:
    """The ``index``-th VOI LUT Sequence table, or None (then the window applies)."""
    seq = ds.get("VOILUTSequence", None)
    if not seq or len(seq) <= index:
        return None
    return read_lut(seq[index], ds, signed_first=modality_output_signed(ds))


# ----------------------------------------------------------------------------- windows

@dataclass(frozen=True)
class Window:
    """Window Center / Width (in Modality LUT output units) and VOI LUT Function."""

    center: float
    width: float
    function: str      # one of VOI_LUT_FUNCTIONS


def _nth_float(value: Any, index: int) -> float:
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[index] if len(value) > index else value[0]
    return float(value)


def read_window(ds: Dataset, index: int = 0) -> Window | None:
    """The ``index``-th window, or None when absent or not applicable.

    PS3.3 C.11.2.1.2: LINEAR needs a width >= 1, LINEAR_EXACT and SIGMOID a width > 0. An
    absent VOI LUT Function is LINEAR; an unknown one is read as LINEAR, as dcmtk does."""
    center, width = ds.get("WindowCenter", None), ds.get("WindowWidth", None)
    if center in (None, "") or width in (None, ""):
        return None
    try:
        c, w = _nth_float(center, index), _nth_float(width, index)
    except (TypeError, ValueError, IndexError):
        return None
    function = coded_attribute(ds, "VOILUTFunction") or "LINEAR"
    if function not in VOI_LUT_FUNCTIONS:
        function = "LINEAR"
    if not (math.isfinite(c) and math.isfinite(w)):
        return None
    too_narrow = w < 1.0 if function == "LINEAR" else w <= 0.0
    if too_narrow:
        return None
    return Window(c, w, function)
