"""Inputs for the receiving side's tests: instances of a chosen size, raw association PDUs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import build_context
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.sop_class import Verification
from pynetdicom.transport import AddressInformation

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def instance_of_size(path: Path, n_bytes: int, seed: int = 0, study: str | None = None,
                     sop: str | None = None) -> Path:
    """A Secondary Capture instance whose 16-bit pixel data is about ``n_bytes`` (random
    pixels, so it does not compress), saved as explicit VR little endian."""
    side = max(16, int((n_bytes // 2) ** 0.5))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = sop or generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.PatientName = "Secret^Person"
    ds.PatientID = "PHI-123"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.random.default_rng(seed).integers(0, 65535, (side, side), dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def raw_associate_rq(called_ae: str, calling_ae_field: bytes, port: int) -> bytes:
    """An A-ASSOCIATE-RQ PDU (Verification) whose 16-byte Calling AE Title field is
    ``calling_ae_field`` as given — e.g. 16 spaces, which no well-behaved SCU can send."""
    assert len(calling_ae_field) == 16
    prim = A_ASSOCIATE()
    prim.application_context_name = "1.2.840.10008.3.1.1.1"
    prim.calling_ae_title = "PLACEHOLDER"
    prim.called_ae_title = called_ae
    prim.calling_presentation_address = AddressInformation("127.0.0.1", 0)
    prim.called_presentation_address = AddressInformation("127.0.0.1", port)
    cx = build_context(Verification)
    cx.context_id = 1
    prim.presentation_context_definition_list = [cx]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    prim.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    raw = bytearray(pdu.encode())
    # PS3.8 9.3.2: type, reserved, length (4), protocol version (2), reserved (2),
    # Called AE Title (bytes 11-26), Calling AE Title (bytes 27-42)
    raw[26:42] = calling_ae_field
    return bytes(raw)
