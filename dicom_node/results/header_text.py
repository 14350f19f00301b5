"""Text values of a received header made fit to copy into a result object (PS3.5 6.2).

A strict PACS refuses a result whose copied patient/study values break their VR: longer than
the VR allows (LO, SH, PN per component group, ...) or holding control characters. And a
Specific Character Set no library knows ("NONE", "Not Supplied") makes pydicom read UTF-8 text
as Latin-1: another name, which a re-declared character set would then call valid. Both are
fixed on the in-memory copy only (the spool keeps the file as received); see
``sr_header.conform_for_report``, which calls these first.
"""

from __future__ import annotations

import re

from pydicom import DataElement, Dataset
from pydicom.datadict import dictionary_VR

# PS3.5 6.2: maximum characters per value, and the control characters allowed (ESC only as
# part of ISO 2022 escapes, gone once decoded; TAB/LF/FF/CR in the free-text VRs)
_MAX_CHARS = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "ST": 1024, "LT": 10240, "UC": None,
              "UT": None}
_FREE_TEXT = {"ST", "LT", "UT"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_EXCEPT_FORMAT = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_TEXT_VRS = ("PN", "LO", "SH", "ST", "LT", "UT", "UC")


def conform_text(ds: Dataset) -> list[str]:
    """Text values cut to their VR's length (a PN per component group) and stripped of the
    control characters the VR forbids, in place; the keywords changed."""
    changed = []
    for elem in ds.iterall():
        if elem.VR not in _MAX_CHARS or elem.value in (None, ""):
            continue
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        fixed = [_conform_value(elem.VR, v) for v in values]
        if fixed != [str(v) for v in values]:
            elem.value = fixed if elem.VM > 1 else fixed[0]
            changed.append(elem.keyword or str(elem.tag))
    return changed


def _conform_value(vr: str, value: object) -> str:
    text = str(value)
    text = (_CONTROL_EXCEPT_FORMAT if vr in _FREE_TEXT else _CONTROL).sub("", text)
    limit = _MAX_CHARS[vr]
    if limit is None:
        return text
    if vr == "PN":
        return "=".join(group[:limit] for group in text.split("="))
    return text[:limit]


def read_unknown_charset_as_utf8(ds: Dataset) -> bool:
    """A Specific Character Set no library knows ("NONE", "Not Supplied") over text that is
    valid UTF-8: the text read as UTF-8 and ISO_IR 192 declared, so the bytes, and the name,
    stay what the sender wrote (pydicom would read them as Latin-1: another name, declared
    valid). True when it did; False for a known set, or text that is not UTF-8."""
    from pydicom.charset import python_encoding

    charset = ds.get("SpecificCharacterSet")
    values = [charset] if isinstance(charset, str) else list(charset or [])
    if not values or all(not v or v in python_encoding for v in values):
        return False
    decoded = {}
    for tag in list(ds.keys()):
        item = ds.get_item(tag)                     # raw: not yet decoded with a guessed set
        vr = item.VR or _dictionary_vr(tag)
        if vr not in _TEXT_VRS:
            continue
        raw = _raw_bytes(item.value)
        if raw is None:
            continue
        try:
            decoded[tag] = (vr, raw.decode("utf-8").rstrip(" \x00"))
        except UnicodeDecodeError:
            return False
    ds.SpecificCharacterSet = "ISO_IR 192"
    for tag, (vr, text) in decoded.items():
        values = text.split("\\") if vr not in _FREE_TEXT else [text]
        ds[tag] = DataElement(tag, vr, values if len(values) > 1 else values[0])
    return True


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:                                 # a private tag: not text we know
        return ""


def _raw_bytes(value: object) -> bytes | None:
    """The bytes a text value was received as: raw, a PN's original, or (read already with
    pydicom's Latin-1 fallback) encoded back, which gives the same bytes."""
    if isinstance(value, bytes):
        return value
    original = getattr(value, "original_string", None)
    if isinstance(original, bytes):
        return original
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            return None
    return None
