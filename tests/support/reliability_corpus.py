"""The bad-input corpus of the reliability suite, generated from a real film.

Each :class:`Case` is a Part 10 file (bytes) sent as it is — pynetdicom sends the bytes after
the file meta without decoding them (``STORE_SEND_CHUNKED_DATASET``), with the transfer syntax
the file meta declares — and the outcome the node owes it. Network-level abuse (random bytes,
truncated PDUs, abrupt disconnects) is in the ``raw_*`` functions, on plain sockets.
"""

from __future__ import annotations

import io
import random
import socket
import struct
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    BasicTextSRStorage,
    CTImageStorage,
    EncapsulatedPDFStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from support.reliability_harness import PHI_BIRTH

# what the node owes a case
REFUSED = "refused"                        # error status, quarantined, nothing queued
REFUSED_OR_UNDECODABLE = "refused_or_undecodable"
UNDECODABLE = "undecodable"                # Success, not assessable (undecodable), quarantined
NOT_ASSESSABLE = "not_assessable"          # Success, not assessable with one of ``reasons``
IGNORED = "ignored"                        # Success, never triaged (SR: loop prevention)
TRIAGED = "triaged"                        # Success and a result for it (odd but readable)
HANDLED = "handled"                        # refused, undecodable or triaged: input a reader may recover

REFUSAL_STATUSES = {0xA900, 0xC000}


@dataclass
class Case:
    name: str
    data: bytes                       # a Part 10 file
    sop_class_uid: str
    sop_instance_uid: str             # as the request states it (file meta)
    study_uid: str | None
    transfer_syntax: str
    expect: str
    reasons: frozenset[str] = field(default_factory=frozenset)
    quarantine: bool = False          # must be quarantined whatever the outcome (broken input)


def _meta(sop_class: str, sop_uid: str, ts: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(ts)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def part10(meta: FileMetaDataset, body: bytes) -> bytes:
    """Preamble + DICM + file meta + ``body`` exactly as given (whatever its encoding)."""
    buf = io.BytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue() + body


def body_of(ds: Dataset) -> bytes:
    """The dataset encoded in its own transfer syntax, without the file meta."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()
    (group_len,) = struct.unpack("<I", raw[140:144])
    return raw[144 + group_len:]


def file_of(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _fresh(base: Dataset) -> Dataset:
    import copy

    ds = copy.deepcopy(base)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _case(name: str, ds: Dataset, expect: str, data: bytes | None = None, *, reasons: tuple = (),
          request_uid: str | None = None, ts: str | None = None, quarantine: bool = False) -> Case:
    return Case(name, data if data is not None else file_of(ds), str(ds.SOPClassUID),
                request_uid or str(ds.SOPInstanceUID), str(ds.get("StudyInstanceUID", "")) or None,
                ts or str(ds.file_meta.TransferSyntaxUID), expect, frozenset(reasons), quarantine)


def _scramble_scan(ds: Dataset, rng: random.Random) -> Dataset:
    """Random bytes over the first frame's coded data after its headers (end marker kept)."""
    frame = bytearray(_first_frame(ds))
    for i in range(len(frame) // 4, len(frame) - 2):
        frame[i] = rng.getrandbits(8)
    ds.PixelData = encapsulate([bytes(frame)])
    return ds


def _first_frame(ds: Dataset) -> bytes:
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def build_corpus(native: Dataset, jpegls: Dataset, j2k: Dataset, jpeg_lossless: Dataset,
                 rle: Dataset, rng: random.Random) -> list[Case]:
    """Every malformed, odd or out-of-scope input the node must survive.

    ``native``: a real film as DX For Presentation, Explicit VR Little Endian, 12 bits;
    ``jpegls`` / ``j2k`` / ``jpeg_lossless`` / ``rle``: the same kind of film compressed.
    """
    cases: list[Case] = []
    add = cases.append

    # -- truncated files ------------------------------------------------------------------
    ds = _fresh(native)
    raw = file_of(ds)
    body_start = len(raw) - len(body_of(ds))
    add(_case("truncated_in_header", ds, REFUSED_OR_UNDECODABLE, raw[:body_start + 180]))
    ds = _fresh(native)
    raw = file_of(ds)
    add(_case("truncated_in_pixel_data", ds, REFUSED_OR_UNDECODABLE, raw[:len(raw) - len(ds.PixelData) // 2]))
    ds = _fresh(native)
    add(_case("empty_dataset", ds, REFUSED, part10(_meta(ds.SOPClassUID, ds.SOPInstanceUID,
                                                             ExplicitVRLittleEndian), b"")))
    ds = _fresh(native)
    noise = bytes(rng.getrandbits(8) for _ in range(4096))
    add(_case("random_bytes_as_dataset", ds, REFUSED_OR_UNDECODABLE,
              part10(_meta(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian), noise)))

    # -- missing or corrupt pixel data --------------------------------------------------------
    ds = _fresh(native)
    del ds.PixelData
    add(_case("missing_pixel_data", ds, NOT_ASSESSABLE, reasons=("undecodable", "non_image"), quarantine=True))
    ds = _fresh(native)
    ds.Rows, ds.Columns = ds.Rows * 2, ds.Columns * 2          # pixel data too short for this
    add(_case("pixel_data_shorter_than_declared", ds, UNDECODABLE))
    add(_case("corrupt_jpegls_scan_data", _scramble_scan(_fresh(jpegls), rng), UNDECODABLE))
    ds = _fresh(j2k)
    frame = bytearray(_first_frame(ds))
    cod = frame.index(b"\xff\x52")                            # COD marker segment
    frame[cod + 4:cod + 14] = b"\xff" * 10
    ds.PixelData = encapsulate([bytes(frame)])
    add(_case("corrupt_j2k_coding_style", ds, UNDECODABLE))
    ds = _scramble_scan(_fresh(j2k), rng)
    # JPEG 2000 tile data is decoded error-resiliently: garbage may come out as a picture;
    # nothing in the file says otherwise. Recorded, either outcome accepted.
    add(_case("corrupt_j2k_tile_data", ds, HANDLED))
    ds = _fresh(rle)
    frame = bytearray(_first_frame(ds))
    (seg1,) = struct.unpack("<I", frame[8:12])
    frame[64:64] = b"\x81\x00"                                # segment 1 decodes 128 bytes too long
    frame[8:12] = struct.pack("<I", seg1 + 2)
    ds.PixelData = encapsulate([bytes(frame)])
    add(_case("rle_segment_overrun_panics_decoder", ds, UNDECODABLE))   # pylibjpeg-rle panics
    for label, src in (("jpegls", jpegls), ("j2k", j2k), ("jpeg_lossless", jpeg_lossless)):
        ds = _fresh(src)
        ds.PixelData = encapsulate([_first_frame(ds)[: len(_first_frame(ds)) // 3]])
        add(_case(f"{label}_codestream_cut_short", ds, UNDECODABLE))

    # -- wrong declared transfer syntax ---------------------------------------------------------
    ds = _fresh(native)
    body = body_of(ds)
    add(_case("native_declared_jpeg_lossless", ds, REFUSED_OR_UNDECODABLE,
              part10(_meta(ds.SOPClassUID, ds.SOPInstanceUID, JPEGLosslessSV1), body), ts=JPEGLosslessSV1))
    ds = _fresh(native)
    add(_case("explicit_declared_implicit", ds, HANDLED,                 # pydicom detects the VR
              part10(_meta(ds.SOPClassUID, ds.SOPInstanceUID, ImplicitVRLittleEndian), body_of(ds)),
              ts=ImplicitVRLittleEndian))
    ds = _fresh(native)
    add(_case("little_endian_declared_big_endian", ds, REFUSED_OR_UNDECODABLE,
              part10(_meta(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRBigEndian), body_of(ds)),
              ts=ExplicitVRBigEndian))
    ds = _fresh(jpegls)
    add(_case("jpegls_declared_j2k", ds, UNDECODABLE,
              part10(_meta(ds.SOPClassUID, ds.SOPInstanceUID, JPEG2000Lossless), body_of(ds)),
              ts=JPEG2000Lossless))

    # -- absurd dimensions (decompression bombs) ---------------------------------------------
    ds = _fresh(native)
    ds.Rows = ds.Columns = 65535
    ds.PixelData = b"\0\0" * 64
    add(_case("bomb_65535_square_native", ds, UNDECODABLE))
    ds = _fresh(native)
    ds.NumberOfFrames = 1_000_000
    add(_case("bomb_million_frames", ds, NOT_ASSESSABLE, reasons=("undecodable", "multi_frame")))
    ds = _fresh(j2k)
    frame = bytearray(_first_frame(ds))
    assert frame[:4] == b"\xff\x4f\xff\x51", "expected SOC + SIZ at the codestream start"
    frame[8:16] = struct.pack(">II", 60000, 60000)            # SIZ Xsiz, Ysiz
    ds.PixelData = encapsulate([bytes(frame)])
    add(_case("bomb_j2k_siz_60000_header_small", ds, UNDECODABLE))
    ds = _fresh(j2k)
    frame = bytearray(_first_frame(ds))
    frame[8:16] = struct.pack(">II", 60000, 60000)
    ds.PixelData = encapsulate([bytes(frame)])
    ds.Rows = ds.Columns = 60000
    add(_case("bomb_j2k_siz_and_header_60000", ds, UNDECODABLE))

    # -- out of scope: non-image classes, other images, multi-frame, colour ------------------
    ds = Dataset()
    ds.file_meta = _meta(EncapsulatedPDFStorage, generate_uid(), ExplicitVRLittleEndian)
    ds.SOPClassUID, ds.SOPInstanceUID = EncapsulatedPDFStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = native.PatientName, native.PatientID, "DOC"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    add(_case("encapsulated_pdf", ds, NOT_ASSESSABLE, reasons=("non_image",)))
    ds = Dataset()
    ds.file_meta = _meta(BasicTextSRStorage, generate_uid(), ExplicitVRLittleEndian)
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = native.PatientName, native.PatientID, "SR"
    add(_case("basic_text_sr", ds, IGNORED))
    ds = _fresh(native)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.Modality = "CT"
    add(_case("ct_image", ds, NOT_ASSESSABLE, reasons=("unsupported_sop_class",)))
    ds = _fresh(native)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    add(_case("multi_frame_dx", ds, NOT_ASSESSABLE, reasons=("multi_frame",)))
    ds = _fresh(native)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    rgb = np.zeros((256, 256, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    ds.set_pixel_data(rgb, "RGB", 8)
    add(_case("colour_secondary_capture", ds, NOT_ASSESSABLE, reasons=("color",)))

    # -- odd VRs and encodings --------------------------------------------------------------
    ds = _fresh(native)
    ds.SpecificCharacterSet = "ISO_IR 999"                     # no such character set
    ds.add_new(0x00100010, "PN", str(native.PatientName).encode() + b"\xe9\xff\xfe")
    add(_case("unknown_charset_and_invalid_bytes", ds, TRIAGED))
    ds = _fresh(native)
    ds.PatientBirthDate = PHI_BIRTH                            # DA, AS, CS written as people do
    ds.PatientAge = "78 years"
    ds.PatientSex = "female"
    ds.StudyDate = "24/11/2026"
    add(_case("non_conformant_patient_values", ds, TRIAGED))
    ds = _fresh(native)
    rows = ds["Rows"]
    ds.add_new(0x00280010, "DS", str(rows.value))              # Rows as a decimal string
    add(_case("rows_with_wrong_vr", ds, TRIAGED, reasons=("undecodable",)))
    ds = _fresh(native)
    ds.add_new(0x00090010, "LO", "CXRT ODD")
    ds.add_new(0x00091001, "UN", bytes(rng.getrandbits(8) for _ in range(333)))  # odd length
    ds.add_new(0x00091002, "OB", b"\0" * 7)
    add(_case("private_odd_length_elements", ds, TRIAGED))
    ds = _fresh(native)
    raw = bytearray(file_of(ds))
    tag = struct.pack("<HH", 0x0008, 0x103E) + b"LO"           # Series Description, LO
    at = raw.index(tag)
    raw[at:at + 8] = struct.pack("<HH", 0x0008, 0x103E) + b"UN" + b"\0\0"  # UN: 4-byte length
    raw[at + 8:at + 8] = struct.pack("<I", 0xFFFFFFFF)        # undefined length, no delimiter
    add(_case("undefined_length_text_element", ds, REFUSED_OR_UNDECODABLE, bytes(raw)))
    ds = _fresh(native)
    raw = bytearray(file_of(ds))
    at = raw.index(struct.pack("<HH", 0x0008, 0x103E) + b"LO")
    raw[at + 6:at + 8] = struct.pack("<H", 0xFFF0)             # length beyond its value
    add(_case("element_length_past_its_value", ds, REFUSED_OR_UNDECODABLE, bytes(raw)))
    ds = _fresh(native)
    ds.StudyInstanceUID = "1.2.abc.not-a-uid"
    add(_case("invalid_study_uid", ds, REFUSED))
    ds = _fresh(native)
    del ds.StudyInstanceUID
    add(_case("missing_study_uid", ds, REFUSED))
    ds = _fresh(native)
    other = generate_uid()
    meta = _meta(ds.SOPClassUID, other, ExplicitVRLittleEndian)
    add(_case("request_uid_differs_from_dataset", ds, REFUSED, part10(meta, body_of(ds)), request_uid=other))
    return cases


# ---------------------------------------------------------------------------- raw sockets

def _item(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(payload)) + payload


def associate_rq(calling: str, called: str, abstract: str, ts: str, max_pdu: int = 16384) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) with one presentation context (id 1)."""
    pc = bytes([1, 0, 0, 0]) + _item(0x30, abstract.encode()) + _item(0x40, ts.encode())
    ctx = _item(0x20, pc)
    user = _item(0x50, _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, b"1.2.826.0.1.3680043.9.3811"))
    body = (struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16) + b"\0" * 32
            + _item(0x10, b"1.2.840.10008.3.1.1.1") + ctx + user)
    return struct.pack(">BxI", 0x01, len(body)) + body


def raw_associate(port: int, calling: str, called: str, abstract: str, ts: str) -> socket.socket:
    """Open an association by hand; returns the socket once the A-ASSOCIATE-AC arrived."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(associate_rq(calling, called, abstract, ts))
    head = _recv_exact(s, 6)
    if head[0] != 0x02:
        s.close()
        raise ConnectionError(f"association not accepted (PDU type 0x{head[0]:02x})")
    (length,) = struct.unpack(">I", head[2:6])
    _recv_exact(s, length)
    return s


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("connection closed")
        out += chunk
    return out


def c_store_pdus(sop_class: str, sop_uid: str, dataset_bytes: bytes, max_pdu: int = 16384) -> list[bytes]:
    """The P-DATA-TF PDUs of one C-STORE-RQ (command, then the dataset in fragments)."""
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.pdu import P_DATA_TF

    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_uid
    req.Priority = 2
    req.DataSet = io.BytesIO(dataset_bytes)
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    out = []
    for prim in msg.encode_msg(1, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(prim)
        out.append(pdu.encode())
    return out


RawAbuse = Callable[[int, str, str, random.Random], None]


def raw_abuses(native: Dataset) -> dict[str, RawAbuse]:
    """Socket-level abuse, each leaves the connection by closing or resetting it."""
    dx, ts = str(native.SOPClassUID), ExplicitVRLittleEndian

    def random_bytes_before_association(port: int, calling: str, called: str, rng: random.Random) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(bytes(rng.getrandbits(8) for _ in range(512)))
            _drain(s)

    def pdu_header_claiming_2gb(port: int, calling: str, called: str, rng: random.Random) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(struct.pack(">BxI", 0x01, 0x7FFFFFFF) + b"\0" * 100)

    def random_bytes_after_association(port: int, calling: str, called: str, rng: random.Random) -> None:
        with raw_associate(port, calling, called, dx, ts) as s:
            s.sendall(bytes(rng.getrandbits(8) for _ in range(2048)))
            _drain(s)

    def malformed_pdata(port: int, calling: str, called: str, rng: random.Random) -> None:
        with raw_associate(port, calling, called, dx, ts) as s:
            pdv = bytes([1, 0x03]) + bytes(rng.getrandbits(8) for _ in range(200))  # last command fragment
            s.sendall(struct.pack(">BxI", 0x04, len(pdv) + 4) + struct.pack(">I", len(pdv)) + pdv)
            _drain(s)

    def disconnect_mid_c_store(port: int, calling: str, called: str, rng: random.Random) -> None:
        ds = _fresh(native)
        pdus = c_store_pdus(dx, str(ds.SOPInstanceUID), body_of(ds))
        with raw_associate(port, calling, called, dx, ts) as s:
            for pdu in pdus[: max(2, len(pdus) // 2)]:
                s.sendall(pdu)

    def reset_mid_c_store(port: int, calling: str, called: str, rng: random.Random) -> None:
        ds = _fresh(native)
        pdus = c_store_pdus(dx, str(ds.SOPInstanceUID), body_of(ds))
        s = raw_associate(port, calling, called, dx, ts)
        for pdu in pdus[:3]:
            s.sendall(pdu)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        s.close()

    def command_without_dataset_then_close(port: int, calling: str, called: str, rng: random.Random) -> None:
        ds = _fresh(native)
        pdus = c_store_pdus(dx, str(ds.SOPInstanceUID), body_of(ds))
        with raw_associate(port, calling, called, dx, ts) as s:
            s.sendall(pdus[0])

    return {f.__name__: f for f in (random_bytes_before_association, pdu_header_claiming_2gb,
                                    random_bytes_after_association, malformed_pdata,
                                    disconnect_mid_c_store, reset_mid_c_store,
                                    command_without_dataset_then_close)}


def _drain(s: socket.socket, timeout: float = 5.0) -> None:
    """Read until the node closes the connection (it should, after an abort)."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
    except (socket.timeout, ConnectionError, OSError):
        pass
