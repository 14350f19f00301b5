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

JPEG 2000 and HTJ2K frames (ISO/IEC 15444-1 A.5.1, 15444-15) are only read for their main
header (:func:`j2k_header`: size, sample format, wavelet levels).
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


@dataclass(frozen=True)
class J2kHeader:
    """What a JPEG 2000 / HTJ2K main header says of the image (15444-1 A.5.1, A.6.1, A.6.2).

    ``rows``, ``cols``: the image area (Ysiz - YOsiz, Xsiz - XOsiz); ``origin_zero``: XOsiz and
    YOsiz are 0 (the reduced sizes are then ceil(side / 2**r), B.5); ``components``: Csiz;
    ``signed``, ``precision``: the first component's Ssiz; ``levels``: the fewest wavelet
    decomposition levels the main header's COD / COC segments give (None: no COD read), the
    most resolution levels a decoder can discard (tile-part headers may give fewer)."""

    rows: int
    cols: int
    origin_zero: bool
    components: int
    signed: bool
    precision: int
    levels: int | None


def j2k_header(frame: bytes) -> J2kHeader | None:
    """The main header of a JPEG 2000 / HTJ2K codestream, or None when SOC + SIZ is not found or
    is cut short. SIZ (A.5.1) from SOC: Xsiz at +8, Ysiz +12, XOsiz +16, YOsiz +20, Csiz +40,
    the first Ssiz +42; COD's SPcod (A.6.1) and COC's SPcoc (A.6.2) start with the number of
    decomposition levels."""
    start = frame.find(b"\xff\x4f\xff\x51")
    if start < 0 or len(frame) < start + 43:
        return None
    xsiz, ysiz, xo, yo = (int.from_bytes(frame[at:at + 4], "big") for at in range(start + 8, start + 24, 4))
    components = int.from_bytes(frame[start + 40:start + 42], "big")
    ssiz = frame[start + 42]
    return J2kHeader(ysiz - yo, xsiz - xo, xo == 0 and yo == 0, components, bool(ssiz & 0x80),
                     (ssiz & 0x7F) + 1, _j2k_levels(frame, start + 2, components))


def _j2k_levels(frame: bytes, pos: int, components: int) -> int | None:
    """The fewest decomposition levels of the main header's COD and COC segments, from the SIZ
    marker at ``pos`` up to the first tile-part (SOT, 0xFF90)."""
    levels: list[int] = []
    while pos + 4 <= len(frame) and frame[pos] == 0xFF and frame[pos + 1] != 0x90:
        length = int.from_bytes(frame[pos + 2:pos + 4], "big")
        if frame[pos + 1] == 0x52 and pos + 10 <= len(frame):  # COD: Scod, SGcod (4), SPcod
            levels.append(frame[pos + 9])
        elif frame[pos + 1] == 0x53:  # COC: Ccoc (1 or 2 bytes), Scoc, SPcoc
            at = pos + 6 + (1 if components >= 257 else 0)
            if at < len(frame):
                levels.append(frame[at])
        pos += 2 + length
    return min(levels) if levels else None


def j2k_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, cols) from a JPEG 2000 / HTJ2K codestream's SIZ segment (:func:`j2k_header`), or
    None when SOC + SIZ is not found."""
    header = j2k_header(frame)
    return (header.rows, header.cols) if header is not None else None


def check_j2k_frame(frame: bytes) -> None:
    """Walk a JPEG 2000 / HTJ2K codestream that starts the frame: the main header's marker
    segments, then each tile-part (SOT, its Psot length, 15444-1 A.4.2) up to the
    end-of-codestream marker (EOC, A.4.4), after which only padding may follow.

    Packet data never holds a byte pair from 0xFF90 up (15444-1 B.10.1, D.4.1 and A.1:
    bit stuffing after every 0xFF; 15444-15 keeps that rule) but for the SOP and EPH markers
    (0xFF91, 0xFF92) that may sit between packets: a tile-part body holding another pair was
    overwritten. Raises :class:`CodestreamError` for such a pair, a tile-part or segment running
    past the frame's end, or no EOC (truncated). A frame that does not start with SOC (a JP2
    wrapper some writers add) is not walked; data overwritten with bytes that form no such pair
    is not found here (OpenJPEG decodes it without complaint).
    """
    data = memoryview(frame)
    if len(data) < 4 or bytes(data[:4]) != b"\xff\x4f\xff\x51":
        return
    pos = 2
    while _marker_at(data, pos) != 0x90:  # main header segments up to the first SOT
        pos += 2 + _segment_length(data, pos)
    while _marker_at(data, pos) == 0x90:
        pos = _check_tile_part(frame, pos)
    if data[pos + 1] != 0xD9:
        raise CodestreamError(f"marker 0xFF{data[pos + 1]:02X} at byte {pos} where a tile-part or the "
                              "end of the codestream belongs")
    _check_tail(data, pos + 2)


def _marker_at(data: memoryview, pos: int) -> int:
    """The marker code at ``pos`` (the byte after 0xFF)."""
    if pos + 2 > len(data):
        raise CodestreamError("the JPEG 2000 codestream is truncated (no end-of-codestream marker)")
    if data[pos] != 0xFF:
        raise CodestreamError(f"byte {pos} of the frame is 0x{data[pos]:02X} where a marker belongs")
    return int(data[pos + 1])


def _check_tile_part(frame: bytes, pos: int) -> int:
    """Check the tile-part whose SOT is at ``pos``; the offset just past it. Psot 0 (the last
    tile-part, length not written) runs to the frame's last EOC marker."""
    data = memoryview(frame)
    if pos + 12 > len(data):
        raise CodestreamError("the JPEG 2000 codestream is truncated inside a tile-part header")
    psot = int.from_bytes(data[pos + 6:pos + 10], "big")
    end = pos + psot if psot else frame.rfind(b"\xff\xd9")
    if psot and end > len(data) or end < pos + 14:
        raise CodestreamError(f"the tile-part at byte {pos} runs past the end of the frame (truncated)")
    body = pos + 2 + _segment_length(data, pos)
    while _marker_at(data, body) != 0x93:  # tile-part header segments up to SOD
        body += 2 + _segment_length(data, body)
    arr = np.frombuffer(frame, dtype=np.uint8, count=end - body - 2, offset=body + 2)
    ff = np.flatnonzero(arr[:-1] == 0xFF)
    following = arr[ff + 1]
    bad = ff[(following >= 0x90) & (following != 0x91) & (following != 0x92)]
    if bad.size:
        at = body + 2 + int(bad[0])
        raise CodestreamError(f"byte pair 0xFF{frame[at + 1]:02X} at byte {at}, inside the packet data of "
                              f"the tile-part at byte {pos}: the data is corrupt")
    return end
