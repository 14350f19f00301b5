"""Films of issue 23's input classes 4-7 and issue 26's HTJ2K, built from a real NIH film.

Each builder returns a pydicom Dataset ready to write (:func:`write_dicom`) or send:

- :func:`padded_jpeg`: JPEG (Baseline, Lossless, JPEG-LS) with zero bytes after EOI (class 4);
- :func:`corrupt_jpeg`: the same with part of the entropy-coded data overwritten (class 7);
- :func:`secondary_capture`: a Secondary Capture with a given Conversion Type / Image Type (5);
- :func:`turned`: a film rotated / mirrored in its pixels, with or without Patient Orientation (6);
- :func:`htj2k`: a film encoded as HTJ2K by imagecodecs (OpenJPH).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom import uid as U
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID, ExplicitVRLittleEndian

from cxr_triage.dicom_node.tools.film_to_dicom import load_film_image, png_to_dicom


def nih_film(shared_data: Path, index: int = 0) -> Path:
    pngs = sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))
    assert len(pngs) > index, f"need NIH films under {shared_data}"
    return pngs[index]


def _frame(ds: Dataset) -> bytes:
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def _bits(ts: str) -> int:
    return 8 if ts == "1.2.840.10008.1.2.4.50" else 12


def padded_jpeg(png: Path, ts: str, pad: int, fill: int = 0) -> Dataset:
    """The film in ``ts`` with ``pad`` bytes of ``fill`` after its end-of-image marker."""
    ds = png_to_dicom(png, transfer_syntax_uid=ts, bits_stored=_bits(ts))
    frame = _frame(ds)
    ds.PixelData = encapsulate([frame[:frame.rindex(b"\xff\xd9") + 2] + bytes([fill]) * pad])
    return ds


def corrupt_jpeg(png: Path, ts: str, *, size: int = 40_000, at: float = 0.6, seed: int = 0,
                 pad: int = 0) -> Dataset:
    """The film in ``ts`` with ``size`` random bytes written over its codestream from ``at``
    (a fraction of its length), and ``pad`` zero bytes after EOI."""
    ds = png_to_dicom(png, transfer_syntax_uid=ts, bits_stored=_bits(ts))
    data = bytearray(_frame(ds))
    start = int(len(data) * at)
    size = min(size, len(data) - start - 16)
    data[start:start + size] = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    ds.PixelData = encapsulate([bytes(data) + b"\0" * pad])
    return ds


def secondary_capture(png: Path, conversion_type: str | None, image_type: list[str] | None = None,
                      modality: str = "OT") -> Dataset:
    """A Secondary Capture (PS3.3 A.8.1) of the film with Conversion Type / Image Type set
    (None: left out)."""
    ds = png_to_dicom(png, sop_class="SC", transfer_syntax_uid=ExplicitVRLittleEndian, bits_stored=8)
    if conversion_type is None:
        del ds.ConversionType
    else:
        ds.ConversionType = conversion_type
    if image_type is not None:
        ds.ImageType = image_type
    ds.Modality = modality
    return ds


def turned_pixels(png: Path, k: int, mirror: bool = False) -> np.ndarray:
    """The film rotated ``k`` quarter turns counter-clockwise (np.rot90), mirrored left-right
    first when ``mirror``."""
    film = load_film_image(png)
    return np.rot90(np.fliplr(film) if mirror else film, k)


def turned(png: Path, k: int, mirror: bool = False, orientation: list[str] | None = None) -> Dataset:
    """A DX film stored turned (:func:`turned_pixels`), with Patient Orientation
    ``orientation`` (None: the attribute left out)."""
    ds = png_to_dicom(turned_pixels(png, k, mirror), transfer_syntax_uid=ExplicitVRLittleEndian)
    if orientation is None:
        del ds.PatientOrientation
    else:
        ds.PatientOrientation = orientation
    return ds


def htj2k(png: Path, ts: str = "1.2.840.10008.1.2.4.201") -> Dataset:
    """The film as a 12-bit HTJ2K Lossless codestream encoded by imagecodecs (OpenJPH)."""
    import imagecodecs

    ds = png_to_dicom(png, transfer_syntax_uid=ExplicitVRLittleEndian, bits_stored=12)
    stored = ds.pixel_array
    ds.PixelData = encapsulate([imagecodecs.htj2k_encode(stored, reversible=True)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = UID(ts)
    ds.LossyImageCompression = "00"
    return ds


def deflate_bomb(png: Path, path: Path, zeros: int) -> Path:
    """A Part 10 file in Deflated Explicit VR Little Endian (PS3.5 A.5) holding the film and a
    private OB element (0009,1000) of ``zeros`` zero bytes: about zeros / 1000 bytes on disk.
    Written in pieces, so ``zeros`` may be far more than this process could hold."""
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    ds = png_to_dicom(png, transfer_syntax_uid=U.DeflatedExplicitVRLittleEndian)
    ds.add_new(0x00090010, "LO", "CXRT BOMB")

    def explicit_le(part: Dataset) -> bytes:
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, False
        write_dataset(buf, part)
        return buf.getvalue()

    before = Dataset()
    after = Dataset()
    for elem in ds:
        (before if elem.tag < 0x00091000 else after).add(elem)
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    meta.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(meta, ds.file_meta)
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = bytes(1 << 24)
    with open(path, "wb") as out:
        out.write(meta.getvalue())
        out.write(deflater.compress(explicit_le(before)))
        out.write(deflater.compress(b"\x09\x00\x00\x10OB\0\0" + zeros.to_bytes(4, "little")))
        left = zeros
        while left:
            n = min(left, len(chunk))
            out.write(deflater.compress(chunk[:n]))
            left -= n
        out.write(deflater.compress(explicit_le(after)))
        out.write(deflater.flush())
    return path
