"""Helpers for the SR and summary-image tests: real validators (dicom3tools, dcmtk) and
small generated source films."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DCIODVFY = Path("/usr/bin/dciodvfy")
DSRDUMP = Path("/usr/bin/dsrdump")
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dciodvfy prints for a file (it reports on stderr, exit code 0)."""
    proc = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True,
                          timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def dsrdump_tree(path: Path) -> str:
    proc = subprocess.run([str(DSRDUMP), "-Ph", "+Pc", "+Pu", "+Pt", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def make_film(study_uid: str, series_uid: str, number: int, *, size: int = 64,
              procedure_code: tuple[str, str, str] | None = None) -> Dataset:
    """A small DX For Presentation chest film with complete patient/study headers."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "CXRT-TEST-7"
    ds.PatientBirthDate = "19600102"
    ds.PatientSex = "F"
    ds.PatientAge = "064Y"
    ds.AccessionNumber = "ACC123"
    ds.StudyID = "S42"
    ds.StudyDate = "20240315"
    ds.StudyTime = "101500"
    ds.ReferringPhysicianName = "Who^Doctor"
    ds.Modality = "DX"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    if procedure_code:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = procedure_code
        ds.ProcedureCodeSequence = [item]
    rng = np.random.default_rng(number)
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def reread(path: Path) -> Dataset:
    return pydicom.dcmread(path)


# dciodvfy asks for General Series Laterality whenever it is absent, but the standard requires
# it only for a paired body part (PS3.3 C.7.3.1); the summary image omits it rather than
# writing an empty value, unless the source film has one.
LATERALITY_NOT_PAIRED = "Error - Missing attribute Type 2C Conditional Element=<Laterality>"


def sc_dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's errors for a summary image, less the unpaired-body-part Laterality one."""
    return [e for e in dciodvfy_errors(path) if not e.startswith(LATERALITY_NOT_PAIRED)]
