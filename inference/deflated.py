"""Deflate bombs: bound what a Deflated Explicit VR Little Endian data set inflates to.

In the Deflated Explicit VR Little Endian transfer syntax (PS3.5 A.5, ``1.2.840.10008.1.2.1.99``)
everything after the File Meta Information is one raw deflate stream (RFC 1951). pydicom
inflates all of it into memory before it reads even the header (``dcmread(...,
stop_before_pixels=True)`` too): 1.6 MB of zeros on the wire can become 1.2 GB in memory, in
the C-STORE handler's header read and again in the worker's read.

:func:`dcmread_bounded` is ``dcmread`` with a bound: it inflates the stream in pieces and
raises :class:`DeflateBomb` as soon as the count passes the limit. The inflated data set is kept
while it is at most :data:`KEEP_INFLATED_BYTES` (a chest film: 2-20 MB), and pydicom reads it
from memory, so the stream is inflated once; a larger one is counted to the end with its pieces
dropped and then read by pydicom itself (inflated twice), so that memory stays a few tens of
MiB whatever the file holds, a bomb included.
:data:`DEFAULT_MAX_INFLATED_BYTES` is above any data set the reader would decode (``max_pixels``
40 M samples at 4 bytes each, plus header room).
"""

from __future__ import annotations

import copy
import io
import zlib
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

#: the most a deflated data set may inflate to (256 MiB)
DEFAULT_MAX_INFLATED_BYTES = 256 * 1024 * 1024
#: the most a deflated data set's inflated bytes are kept in memory to be read once (24 MiB)
KEEP_INFLATED_BYTES = 24 * 1024 * 1024
_READ = 1 << 20       # compressed bytes read at a time
_OUT = 1 << 22        # inflated bytes produced at a time


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


def _inflate(fp: BinaryIO, limit: int, keep: BinaryIO) -> tuple[bool, bool]:
    """Inflate the raw deflate stream from ``fp``'s position in pieces, appending them to
    ``keep`` while its inflated bytes are at most :data:`KEEP_INFLATED_BYTES`, then counting
    only: (whether the stream ended whole, False where it is cut short or corrupt; whether all
    of it was kept). DeflateBomb once more than ``limit`` bytes have come out."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, kept = 0, True
    try:
        while not inflater.eof:
            data = fp.read(_READ)
            if not data:
                break
            while data:
                piece = inflater.decompress(data, _OUT)
                total += len(piece)
                if total > limit:
                    raise DeflateBomb(total, limit)
                if kept and total > KEEP_INFLATED_BYTES:
                    kept = False
                    keep.truncate(0)  # counted from here on, its memory given back
                if kept:
                    keep.write(piece)
                data = inflater.unconsumed_tail
    except zlib.error:
        return False, kept
    return inflater.eof, kept


def dcmread_bounded(path: str | Path, limit: int = DEFAULT_MAX_INFLATED_BYTES, **kwargs: Any) -> Dataset:
    """``pydicom.dcmread(path, **kwargs)`` with a deflated data set inflated in bounded pieces,
    once when it inflates to at most :data:`KEEP_INFLATED_BYTES` (see the module text).

    Raises DeflateBomb once more than ``limit`` bytes have come out (nothing more is inflated),
    ValueError for a stream cut short or corrupt (pydicom's own read: zlib.error), and whatever
    ``dcmread`` raises. Another syntax: ``dcmread`` itself. The data set read keeps the file's
    File Meta Information (the deflated syntax) and ``filename``."""
    with open(path, "rb") as fp:
        if _deflate_start(fp) is None:
            return dcmread(path, **kwargs)
        fp.seek(0)
        preamble = read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        # the same file with its data set inflated, which pydicom reads as Explicit VR Little Endian
        plain = copy.deepcopy(meta)
        plain.TransferSyntaxUID = ExplicitVRLittleEndian
        head = DicomBytesIO()
        head.write((preamble or b"\0" * 128) + b"DICM")
        write_file_meta_info(head, plain, enforce_standard=False)
        whole = io.BytesIO(head.getvalue())
        whole.seek(0, io.SEEK_END)
        ended, kept = _inflate(fp, limit, whole)
    if not ended:
        raise ValueError("the deflated data set's stream is cut short or corrupt (incomplete or truncated stream)")
    if not kept:
        del whole
        return dcmread(path, **kwargs)  # under the limit, too large to keep: pydicom inflates it
    whole.seek(0)
    kwargs.pop("defer_size", None)  # its values are in memory already
    ds = dcmread(whole, **kwargs)
    ds.file_meta = meta
    ds.filename = str(path)
    return ds
