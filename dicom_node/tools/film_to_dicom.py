"""Wrap a film (PNG/JPEG or array) into a CR / DX / SC DICOM dataset, in any transfer syntax.

The test-film factory. Tests, benchmarks, the evaluation's end-to-end runs and the demo need real
films as the DICOM a PACS would send, in all the variants the reader must handle (bit depth, sign,
MONOCHROME1, rescale, window, VOI LUT Sequence, padding, compression). The encoders are in
:mod:`film_encoding`; `cxr-triage wrap` (:mod:`wrap`) is the command line.

The stored values are a linear function of the film's brightness (inverted for MONOCHROME1), so
a correct reader recovers the film up to an affine intensity change (and codec error).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    generate_uid,
)

from cxr_triage.dicom_node.tools.film_encoding import SUPPORTED_SYNTAXES, encode_pixels

SopClassName = Literal["CR", "DX_PRES", "DX_PROC", "SC"]

SOP_CLASS_UIDS: dict[str, UID] = {
    "CR": UID("1.2.840.10008.5.1.4.1.1.1"),
    "DX_PRES": UID("1.2.840.10008.5.1.4.1.1.1.1"),
    "DX_PROC": UID("1.2.840.10008.5.1.4.1.1.1.1.1"),
    "SC": UID("1.2.840.10008.5.1.4.1.1.7"),
}

#: View Position -> SNOMED CT code of DICOM CID 4010 "DX View"
VIEW_CODES: dict[str, tuple[str, str]] = {
    "PA": ("272479007", "postero-anterior"),   # CID 4010 (PS3.16), as pydicom's table has it
    "AP": ("399348003", "antero-posterior"),
    "LL": ("399173006", "left lateral"),
    "RL": ("399198007", "right lateral"),
}
#: Series Description words for a View Position (PA and AP read as themselves).
SERIES_VIEW_WORDS = {"LL": "LEFT LATERAL", "RL": "RIGHT LATERAL"}
#: Patient Orientation (0020,0020) of an upright film as usually displayed (PS3.3 C.7.6.1.1.1):
#: PA/AP viewed as facing the patient, a lateral with the patient's front to the viewer's left
#: (left lateral) or right (right lateral).
PATIENT_ORIENTATION = {"PA": ["R", "F"], "AP": ["L", "F"], "LL": ["P", "F"], "RL": ["A", "F"]}


def load_film_image(source: str | Path | np.ndarray) -> np.ndarray:
    """A film as float64 (H, W) in [0, 1] with bright = dense (MONOCHROME2).

    Paths are read with Pillow (8- or 16-bit grayscale; RGB is converted to luminance).
    Arrays: uint8 / uint16 use their full type range; floats must already be in [0, 1].
    """
    if isinstance(source, np.ndarray):
        arr = source
    else:
        with Image.open(source) as img:
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.int64).clip(0, 65535).astype(np.uint16)
            else:
                arr = np.asarray(img.convert("L"))
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale film, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float64) / 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise ValueError("float films must lie in [0, 1]")
        return arr.astype(np.float64)
    raise ValueError(f"unsupported film dtype {arr.dtype}")


def stored_range(bits_stored: int, signed: bool) -> tuple[int, int]:
    """Smallest and largest stored value for a bit depth and sign."""
    if signed:
        return -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    return 0, (1 << bits_stored) - 1


def film_to_stored(film: np.ndarray, bits_stored: int, signed: bool, photometric: str) -> np.ndarray:
    """Film in [0, 1] (MONOCHROME2) -> stored integer values spanning the full range."""
    lo, hi = stored_range(bits_stored, signed)
    level = film if photometric == "MONOCHROME2" else 1.0 - film
    stored = lo + np.rint(level * (hi - lo)).astype(np.int64)
    dtype: type[np.integer[Any]]
    if bits_stored <= 8:
        dtype = np.int8 if signed else np.uint8
    else:
        dtype = np.int16 if signed else np.uint16
    return stored.astype(dtype)


def _sigmoid_voi_lut(first_mapped: int, n_entries: int, bits: int = 16) -> npt.NDArray[np.uint16]:
    """A smooth, strictly increasing VOI LUT (what many CR/DX vendors ship instead of a window)."""
    x = np.linspace(-3.0, 3.0, n_entries)
    y: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-x))
    y = (y - y[0]) / (y[-1] - y[0])
    return np.rint(y * ((1 << bits) - 1)).astype(np.uint16)


def png_to_dicom(
    source: str | Path | np.ndarray,
    *,
    sop_class: SopClassName = "DX_PRES",
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    bits_stored: int = 12,
    signed: bool = False,
    photometric: Literal["MONOCHROME1", "MONOCHROME2"] = "MONOCHROME2",
    rescale_slope: float | None = None,
    rescale_intercept: float | None = None,
    window: tuple[float, float] | Literal["full", "auto"] | None = "auto",
    voi_lut_sequence: bool = False,
    pixel_padding: int | None = None,
    padding_border: int = 0,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    patient_name: str = "Test^Film",
    patient_id: str = "CXRT-0001",
    patient_age: str | None = "045Y",
    patient_sex: str = "O",
    view_position: str = "PA",
    body_part: str = "CHEST",
    study_description: str = "XR CHEST",
    accession_number: str = "",
    instance_number: int = 1,
    series_number: int = 1,
    jpeg_quality: int = 95,
) -> Dataset:
    """Build a DICOM dataset from a film, encoded in ``transfer_syntax_uid``.

    bits_stored: 8..16 (8 -> Bits Allocated 8, else 16). signed: Pixel Representation 1.
    rescale_slope/intercept: written as the Modality LUT (stored values unchanged; CR/SC only
        by the standard, written for any class because tests need non-conformant inputs too).
    window: (center, width) in modality units, "full" for a window over the whole range,
        "auto" for "full" on DX For Presentation (which requires a VOI) and none otherwise.
    voi_lut_sequence: add a sigmoid VOI LUT over the modality range (preferred by readers).
    pixel_padding / padding_border: Pixel Padding Value (a stored value) and a frame of that
        many pixels set to it (as collimation padding looks).
    The header carries the Patient, Study, Series, Equipment, Image and the CR/DX/SC modules'
    usual attributes so that the gate and the SR builder see realistic input.
    """
    if sop_class not in SOP_CLASS_UIDS:
        raise ValueError(f"sop_class must be one of {', '.join(SOP_CLASS_UIDS)}")
    if not 8 <= bits_stored <= 16:
        raise ValueError("bits_stored must be 8..16")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError("photometric must be MONOCHROME1 or MONOCHROME2")
    tsyntax = UID(transfer_syntax_uid)
    if tsyntax not in SUPPORTED_SYNTAXES:
        raise ValueError(f"transfer syntax {tsyntax} ({tsyntax.name}) is not supported")
    if tsyntax == JPEGBaseline8Bit and (bits_stored != 8 or signed):
        raise ValueError("JPEG Baseline holds 8-bit unsigned samples only")
    if tsyntax == JPEGExtended12Bit and (bits_stored > 12 or signed):
        raise ValueError("JPEG Extended holds up to 12-bit unsigned samples")

    film = load_film_image(source)
    stored = film_to_stored(film, bits_stored, signed, photometric)
    if pixel_padding is not None and padding_border > 0:
        b = padding_border
        stored[:b, :] = pixel_padding
        stored[-b:, :] = pixel_padding
        stored[:, :b] = pixel_padding
        stored[:, -b:] = pixel_padding

    ds = _header(
        sop_class=sop_class, study_uid=study_uid, series_uid=series_uid,
        sop_instance_uid=sop_instance_uid, patient_name=patient_name, patient_id=patient_id,
        patient_age=patient_age, patient_sex=patient_sex, view_position=view_position,
        body_part=body_part, study_description=study_description,
        accession_number=accession_number, instance_number=instance_number,
        series_number=series_number, photometric=photometric,
    )
    ds.set_pixel_data(stored, photometric, bits_stored, generate_instance_uid=False)
    # set_pixel_data sets the syntax to Explicit VR LE for native data; keep the file meta in step
    if rescale_slope is not None or rescale_intercept is not None:
        ds.RescaleSlope = rescale_slope if rescale_slope is not None else 1.0
        ds.RescaleIntercept = rescale_intercept if rescale_intercept is not None else 0.0
        ds.RescaleType = "US"
    elif sop_class.startswith("DX"):
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1.0, 0.0, "US"

    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
    lo, hi = stored_range(bits_stored, signed)
    m_lo, m_hi = sorted((lo * slope + intercept, hi * slope + intercept))
    if window == "auto":
        window = "full" if sop_class == "DX_PRES" and not voi_lut_sequence else None
    if window == "full":
        ds.WindowCenter = f"{(m_lo + m_hi + 1) / 2:.10g}"
        ds.WindowWidth = f"{m_hi - m_lo + 1:.10g}"
    elif window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:.10g}", f"{window[1]:.10g}"
    if voi_lut_sequence:
        first, n = int(np.floor(m_lo)), int(np.ceil(m_hi)) - int(np.floor(m_lo)) + 1
        if n > 65536:
            raise ValueError("modality range too wide for a VOI LUT Sequence (max 65536 entries)")
        if signed and n > 32767:
            raise ValueError("a signed VOI LUT Descriptor holds at most 32767 entries: "
                             "use bits_stored <= 14 with signed data")
        item = Dataset()
        # US or SS as the Pixel Representation says (the VR is ambiguous in the dictionary)
        item.add_new(0x00283002, "SS" if signed else "US", [n if n < 65536 else 0, first, 16])
        item.LUTExplanation = "cxr-triage test sigmoid"
        item.add_new(0x00283006, "OW", _sigmoid_voi_lut(first, n).astype("<u2").tobytes())
        ds.VOILUTSequence = DicomSequence([item])
    if pixel_padding is not None:
        ds.add_new(0x00280120, "SS" if signed else "US", int(pixel_padding))
    if sop_class.startswith("DX"):
        ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"

    encode_pixels(ds, stored, tsyntax, jpeg_quality)
    return ds


def _header(*, sop_class: str, study_uid: str | None, series_uid: str | None,
            sop_instance_uid: str | None, patient_name: str, patient_id: str,
            patient_age: str | None, patient_sex: str, view_position: str, body_part: str,
            study_description: str, accession_number: str, instance_number: int,
            series_number: int, photometric: str) -> Dataset:
    now = _dt.datetime.now()
    sop_uid = UID(sop_instance_uid or generate_uid())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASS_UIDS[sop_class]
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SOP_CLASS_UIDS[sop_class]
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = accession_number
    ds.Modality = {"CR": "CR", "SC": "OT"}.get(sop_class, "DX")
    ds.Manufacturer = "cxr-triage film_to_dicom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = f"{SERIES_VIEW_WORDS.get(view_position, view_position)} {body_part}".strip()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = patient_sex
    if patient_age:
        ds.PatientAge = patient_age
    ds.BodyPartExamined = body_part
    ds.AnatomicRegionSequence = DicomSequence()
    if body_part.upper() == "CHEST":
        region = Dataset()
        region.CodeValue, region.CodingSchemeDesignator = "43799004", "SCT"
        region.CodeMeaning = "Chest"
        ds.AnatomicRegionSequence.append(region)
    ds.ViewPosition = view_position
    if sop_class.startswith("DX") and view_position in VIEW_CODES:
        view = Dataset()
        view.CodeValue, view.CodingSchemeDesignator = VIEW_CODES[view_position][0], "SCT"
        view.CodeMeaning = VIEW_CODES[view_position][1]
        ds.ViewCodeSequence = DicomSequence([view])
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = PATIENT_ORIENTATION.get(view_position, ["R", "F"])
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if sop_class != "SC" else ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "NO"
    if sop_class.startswith("DX"):
        ds.PresentationIntentType = (
            "FOR PRESENTATION" if sop_class == "DX_PRES" else "FOR PROCESSING"
        )
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME2" else -1
        ds.DetectorType = "SCINTILLATOR"
        ds.ImageLaterality = "U"
        ds.ImagerPixelSpacing = [0.7, 0.7]
        ds.PositionerType = ""
        ds.AcquisitionContextSequence = DicomSequence()
    ds.LossyImageCompression = "00"
    if sop_class == "SC":  # a film wrapped as Secondary Capture: a digitised film (PS3.3 C.8.6.1)
        ds.ConversionType = "DF"
    return ds


def write_dicom(ds: Dataset, path: str | Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file (deflated when its syntax says so)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def films_to_study(sources: Sequence[str | Path | np.ndarray], out_dir: str | Path,
                   **kwargs: object) -> list[Path]:
    """Write several films as one study (one series), ``<out_dir>/<n>.dcm``; returns the paths."""
    study_uid = str(kwargs.pop("study_uid", None) or generate_uid())
    series_uid = str(kwargs.pop("series_uid", None) or generate_uid())
    paths = []
    for i, src in enumerate(sources, start=1):
        ds = png_to_dicom(src, study_uid=study_uid, series_uid=series_uid,
                          instance_number=i, **kwargs)  # type: ignore[arg-type]
        paths.append(write_dicom(ds, Path(out_dir) / f"{i:04d}.dcm"))
    return paths
