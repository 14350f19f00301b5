"""Deflate bombs: bound what a Deflated Explicit VR Little Endian data set inflates to.

In the Deflated Explicit VR Little Endian transfer syntax (PS3.5 A.5, ``1.2.840.10008.1.2.1.99``)
everything after the File Meta Information is one raw deflate stream (RFC 1951). pydicom
inflates all of it into memory before it reads even the header (``dcmread(...,
stop_before_pixels=True)`` too): 1.6 MB of zeros on the wire can become 1.2 GB in memory, in
the C-STORE handler's header read and again in the worker's read.

:func:`check_inflated_size` inflates the stream in bounded pieces, counting and discarding the
output, and raises :class:`DeflateBomb` as soon as the count passes the limit: its memory is a
few MiB whatever the file holds, and it stops at the limit. Callers run it before ``dcmread``.
:data:`DEFAULT_MAX_INFLATED_BYTES` is above any data set the reader would decode (``max_pixels``
40 M samples at 4 bytes each, plus header room).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import BinaryIO

from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

#: the most a deflated data set may inflate to (256 MiB)
DEFAULT_MAX_INFLATED_BYTES = 256 * 1024 * 1024
_READ = 1 << 20       # compressed bytes read at a time
_OUT = 1 << 22        # inflated bytes produced at a time (then dropped)


class DeflateBomb(ValueError):
    """A deflated data set inflates past the limit (``inflated``: bytes counted when stopped)."""

    def __init__(self, inflated: int, limit: int):
        super().__init__(f"the deflated data set inflates past {limit} bytes "
                         f"(stopped at {inflated}): a deflate bomb")
        self.inflated = inflated
        self.limit = limit


def _deflate_start(fp: BinaryIO) -> int | None:
    """The offset of the deflate stream of a Part 10 file in the deflated syntax, else None
    (another syntax, no preamble, or a file meta pydicom cannot read: its own reader decides)."""
    try:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
    except Exception:  # noqa: BLE001 - not Part 10, or a broken meta: pydicom's own read decides
        return None
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return None
    return fp.tell()


def check_inflated_size(path: str | Path, limit: int = DEFAULT_MAX_INFLATED_BYTES) -> int | None:
    """Bytes the deflated data set at ``path`` inflates to (None: not in the deflated syntax).

    Raises DeflateBomb once more than ``limit`` bytes have come out. A stream that is corrupt
    ends the count where it breaks (pydicom's own read then fails on it).
    """
    with open(path, "rb") as fp:
        if _deflate_start(fp) is None:
            return None
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        try:
            while not inflater.eof:
                data = fp.read(_READ)
                if not data:
                    break
                while data:
                    total += len(inflater.decompress(data, _OUT))
                    if total > limit:
                        raise DeflateBomb(total, limit)
                    data = inflater.unconsumed_tail
        except zlib.error:
            pass
        return total
