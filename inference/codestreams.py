"""What a compressed frame's codestream holds, read before anything is decoded.

Decoders size their output from the codestream and fill what they cannot read: a cut JPEG
codestream decodes into a partial film, and one with part of its entropy-coded data overwritten
decodes into a film with a flat or smeared band (libjpeg resynchronises at the next marker it
can use). So, before decoding, :func:`inspect_frame` walks the JPEG (ISO/IEC 10918-1 B.1) and
JPEG-LS (ISO/IEC 14495-1 C.1) marker structure from SOI to EOI:

- a frame whose marker segments or scans hold a byte pair no encoder writes (``FF xx`` that is
  neither stuffing, a restart marker nor a marker segment allowed there: B.1.1.2, B.1.1.5,
  14495-1 C.1.5 and 9.1) is corrupt, and so is one without an end-of-image marker (truncated);
- bytes after EOI are not part of the codestream (fragment padding, or a sender's zero fill):
  :attr:`FrameInfo.end` says where the codestream stops, and the frame is decoded up to there,
  as dcmtk's decoders do. Only padding may follow (0x00 or 0xFF bytes): other bytes there mean
  the EOI found was an overwritten byte pair, and the frame is corrupt.

JPEG 2000 and HTJ2K frames (ISO/IEC 15444-1 A.5.1, 15444-15) are only read for their size (SIZ).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: marker segments (with a length) allowed between scans and in frame headers: SOFn, DHT, DAC,
#: DQT, DNL, DRI, DHP, EXP, APPn, COM, JPEG-LS SOF55 (F7) and LSE (F8), JPGn (F0-FD)
_SEGMENT_MARKERS = frozenset({*range(0xC0, 0xC8), *range(0xC9, 0xD0), 0xC8, 0xDB, 0xDC, 0xDD,
                              0xDE, 0xDF, *range(0xE0, 0xF0), *range(0xF0, 0xFE), 0xFE})
_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
_RST = frozenset(range(0xD0, 0xD8))


class CodestreamError(ValueError):
    """The frame's codestream is cut or corrupt; the message says where and how."""


@dataclass(frozen=True)
class FrameInfo:
    """A JPEG or JPEG-LS frame's size (rows, cols; None when no SOF was found) and ``end``, the
    offset just past its EOI marker (``len(frame) - end`` bytes follow the codestream)."""

    rows: int | None
    cols: int | None
    end: int


def inspect_frame(frame: bytes, *, jpeg_ls: bool) -> FrameInfo:
    """Walk a JPEG (``jpeg_ls`` False) or JPEG-LS frame's markers from SOI to EOI.

    Raises :class:`CodestreamError` for a frame without SOI, a segment running past the end, a
    marker no encoder writes inside a scan, or no EOI (truncated).
    """
    data = memoryview(frame)
    if len(data) < 4 or data[0] != 0xFF or data[1] != _SOI:
        raise CodestreamError("the frame does not start with a JPEG start-of-image marker")
    rows = cols = None
    pos = 2
    while True:
        pos = _next_marker(data, pos)
        marker = data[pos + 1]
        if marker == _EOI:
            _check_tail(data, pos + 2)
            return FrameInfo(rows or None, cols or None, pos + 2)
        if marker not in _SEGMENT_MARKERS and marker != _SOS:
            raise CodestreamError(f"unexpected marker 0xFF{marker:02X} at byte {pos} of the frame")
        length = _segment_length(data, pos)
        if marker in (0xF7, *range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC),
                      *range(0xCD, 0xD0)) and length >= 7:
            rows = int.from_bytes(data[pos + 5:pos + 7], "big")
            cols = int.from_bytes(data[pos + 7:pos + 9], "big")
        pos += 2 + length
        if marker == _SOS:
            pos = _scan_end(frame, pos, jpeg_ls)


def _check_tail(data: memoryview, end: int) -> None:
    """Bytes after EOI must be padding (0x00, or 0xFF fill): anything else means the EOI found
    was a corrupt byte pair inside the data, or a second image, and is refused."""
    tail = np.frombuffer(data[end:], dtype=np.uint8)
    junk = np.flatnonzero((tail != 0x00) & (tail != 0xFF))
    if junk.size:
        raise CodestreamError(f"{tail.size} bytes follow the end-of-image marker at byte {end - 2} "
                              f"and are not padding (0x{tail[junk[0]]:02X} at byte {end + int(junk[0])})")


def _next_marker(data: memoryview, pos: int) -> int:
    """The offset of the marker at ``pos`` (fill bytes 0xFF before it skipped)."""
    if pos + 1 >= len(data):
        raise CodestreamError("the compressed frame is truncated (no end-of-image marker)")
    if data[pos] != 0xFF:
        raise CodestreamError(f"byte {pos} of the frame is 0x{data[pos]:02X} where a marker belongs")
    while pos + 1 < len(data) and data[pos + 1] == 0xFF:
        pos += 1
    if pos + 1 >= len(data):
        raise CodestreamError("the compressed frame is truncated (no end-of-image marker)")
    return pos


def _segment_length(data: memoryview, pos: int) -> int:
    if pos + 4 > len(data):
        raise CodestreamError("the compressed frame is truncated inside a marker segment")
    length = int.from_bytes(data[pos + 2:pos + 4], "big")
    if length < 2 or pos + 2 + length > len(data):
        raise CodestreamError(f"a marker segment at byte {pos} runs past the end of the frame")
    return length


def _scan_end(frame: bytes, start: int, jpeg_ls: bool) -> int:
    """The offset of the first marker after the entropy-coded data from ``start`` (a restart
    marker continues the scan). In JPEG an 0xFF data byte is followed by 0x00 (B.1.1.5); in
    JPEG-LS by a byte below 0x80 (14495-1 9.1): anything else there is a marker."""
    arr = np.frombuffer(frame, dtype=np.uint8, offset=start)
    ff = np.flatnonzero(arr[:-1] == 0xFF)
    following = arr[ff + 1]
    is_data = following < 0x80 if jpeg_ls else following == 0x00
    candidates = ff[~is_data & (following != 0xFF) & ((following < 0xD0) | (following > 0xD7))]
    if candidates.size == 0:
        raise CodestreamError("the compressed frame is truncated (no end-of-image marker)")
    return start + int(candidates[0])


def j2k_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, cols) from a JPEG 2000 / HTJ2K codestream's SIZ segment (15444-1 A.5.1: Xsiz at
    +8, Ysiz at +12, XOsiz, YOsiz after them), or None when SOC + SIZ is not found."""
    start = frame.find(b"\xff\x4f\xff\x51")
    if start < 0 or len(frame) < start + 24:
        return None
    xsiz = int.from_bytes(frame[start + 8:start + 12], "big")
    ysiz = int.from_bytes(frame[start + 12:start + 16], "big")
    xo = int.from_bytes(frame[start + 16:start + 20], "big")
    yo = int.from_bytes(frame[start + 20:start + 24], "big")
    return ysiz - yo, xsiz - xo
