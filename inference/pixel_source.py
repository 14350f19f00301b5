"""The pixel data a decoder gets: the first frame's codestream checked, trimmed, and handed over
with a canonical Image Pixel Module.

:func:`frame_check` reads the first compressed frame's size and structure before decoding
(:mod:`cxr_triage.inference.codestreams`): decoders size their output from the codestream, not
from the header, so a small header with a huge codestream is a decompression bomb, and a cut or
corrupt JPEG / JPEG-LS codestream decodes without error into a partial film. Both are refused
as ``undecodable``, and so is a JPEG 2000 / HTJ2K codestream whose tile-parts are cut or hold a
byte pair no encoder writes (:func:`~cxr_triage.inference.codestreams.check_j2k_frame`).
Padding after the end-of-image marker is not part of the codestream and is left out of what the
decoder gets (:func:`pixel_source`), as dcmtk does.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from cxr_triage.contract.result import NotAssessable, NotAssessableReason
from cxr_triage.inference.codestreams import (
    CodestreamError,
    J2kHeader,
    check_j2k_frame,
    inspect_frame,
    j2k_header,
)

#: High-Throughput JPEG 2000 (PS3.5 A.4.11, 2023): Lossless, RPCL Lossless, (lossy)
HTJ2K_SYNTAXES = ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")


@dataclass(frozen=True)
class FrameCheck:
    """The first frame's (rows, cols) as its codestream declares them (None: not read), and the
    codestream without trailing padding when padding followed it (None: decode as stored); for
    JPEG 2000 and HTJ2K, the first frame and its main header (None for the other syntaxes)."""

    size: tuple[int, int] | None
    trimmed: bytes | None
    frame: bytes | None = None
    j2k: J2kHeader | None = None


def _undecodable(detail: str) -> NotAssessable:
    return NotAssessable(NotAssessableReason.UNDECODABLE, detail)


def frame_check(ds: Dataset) -> FrameCheck:
    """Size and structure of ``ds``'s first compressed frame (native data: nothing to check).

    Raises NotAssessable (undecodable) for an unknown transfer syntax, unreadable encapsulation,
    or a JPEG / JPEG-LS codestream (:func:`inspect_frame`) or JPEG 2000 / HTJ2K codestream
    (:func:`check_j2k_frame`) that is truncated or corrupt.
    """
    tsyntax = ds.file_meta.TransferSyntaxUID
    if not tsyntax.is_transfer_syntax:  # pydicom raises ValueError on its properties
        raise _undecodable("the file meta names no known transfer syntax")
    if not tsyntax.is_encapsulated:
        return FrameCheck(None, None)
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception as exc:  # any framing error means undecodable
        raise _undecodable(f"encapsulated pixel data unreadable ({type(exc).__name__}: {exc})") from exc
    if tsyntax in JPEGTransferSyntaxes or tsyntax in JPEGLSTransferSyntaxes:
        try:
            info = inspect_frame(frame, jpeg_ls=tsyntax in JPEGLSTransferSyntaxes)
        except CodestreamError as exc:
            raise _undecodable(f"compressed frame is corrupt or truncated: {exc}") from exc
        size = (info.rows, info.cols) if info.rows and info.cols else None
        # one byte after EOI is the even-length padding of the fragment (PS3.5 A.4)
        return FrameCheck(size, frame[:info.end] if len(frame) - info.end > 1 else None)
    if tsyntax in JPEG2000TransferSyntaxes or tsyntax in HTJ2K_SYNTAXES:
        try:
            check_j2k_frame(frame)
        except CodestreamError as exc:
            raise _undecodable(f"compressed frame is corrupt or truncated: {exc}") from exc
        header = j2k_header(frame)
        return FrameCheck((header.rows, header.cols) if header else None, None, frame, header)
    return FrameCheck(None, None)


def pixel_source(ds: Dataset, photometric: str, trimmed: bytes | None = None) -> Dataset:
    """``ds``, or a new dataset sharing ds's Image Pixel Module elements (group 0028, PS3.3
    C.7.6.3) with the canonical Photometric Interpretation (when ds's is not written
    canonically: lower case, NUL padding, which the gate accepts) and the ``trimmed`` codestream
    as its one fragment (when given), so pydicom's decoders accept it and the caller's dataset is
    left as it was."""
    if ds.get("PhotometricInterpretation") == photometric and trimmed is None:
        return ds
    src = Dataset()
    src.file_meta = ds.file_meta
    for elem in ds.group_dataset(0x0028):
        if elem.tag != 0x00280004:  # a new element below: assigning would change the shared one
            src.add(elem)
    src.add_new(0x00280004, "CS", photometric)
    if trimmed is not None:  # one frame: no offset table to carry
        src.add_new(0x7FE00010, "OB", encapsulate([trimmed]))
        return src
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths", "PixelData"):
        if keyword in ds:
            src.add(ds[keyword])
    return src
