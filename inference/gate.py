"""The intended-use gate: is this an adult human frontal chest radiograph the model may read?

The model was trained and validated on adult frontal chest films only; anything else gets a
*not assessable* result with a coded reason instead of a score that would look trustworthy.
Header checks run before decoding (cheap, and they refuse multi-frame or non-image objects
without touching their pixels); pixel checks run on the decoded film.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass

from pydicom import Dataset

from cxr_triage.contract.patient import parse_age_years
from cxr_triage.contract.result import NotAssessable
from cxr_triage.contract.result import NotAssessableReason as R
from cxr_triage.contract.sop_classes import MULTI_FRAME_SOP_CLASSES, TRIAGE_SOP_CLASSES
from cxr_triage.inference.reader import Film

HUMAN_SPECIES_CODES = {("337915000", "SCT"), ("L-85B00", "SRT")}  # Homo sapiens
HUMAN_SPECIES_WORDS = {"HUMAN", "HOMO SAPIENS", "HOMO SAPIENS SAPIENS"}
#: words that, in procedure / protocol descriptions, mark a veterinary study
VETERINARY_WORDS = {
    "CANINE", "FELINE", "EQUINE", "BOVINE", "PORCINE", "OVINE", "CAPRINE", "AVIAN",
    "DOG", "CAT", "HORSE", "VET", "VETERINARY", "VETERINARIAN", "VETERINAER", "VETERINAIRE",
}
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "TORAX", "THORAC", "PULM", "POITRINE", "BRUST")
CHEST_REGION_CODES = {"43799004", "51185008", "39607008", "T-D3000", "T-28000", "T-D3100"}
NON_FRONTAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "RLO", "LLO", "OBL", "OBLIQUE"}
LATERAL_VIEW_CODES = {"399173006", "399198007", "399067008", "R-10236", "R-10232", "R-10206"}
_LATERAL_TEXT = re.compile(r"\b(LAT|LATERAL|LATERALE|SEITLICH|SEITL)\b")


@dataclass(frozen=True)
class GateSettings:
    """The configurable limits (``[inference] min_age_years``, ``min_image_size``)."""

    min_age_years: float = 16.0
    min_image_size: int = 256


def _words(ds: Dataset, keywords: tuple[str, ...]) -> str:
    return " ".join(str(ds.get(k, "") or "") for k in keywords).upper()


def _code_meanings(ds: Dataset, sequences: tuple[str, ...]) -> str:
    parts = []
    for seq in sequences:
        for item in ds.get(seq, None) or []:
            parts.append(str(item.get("CodeMeaning", "")))
    return " ".join(parts).upper()


def patient_age_years(ds: Dataset) -> float | None:
    """Age in years from Patient's Age, else from Birth Date and the study/acquisition date."""
    age = parse_age_years(str(ds.get("PatientAge", "") or ""))
    if age is not None:
        return age
    birth = str(ds.get("PatientBirthDate", "") or "")
    seen = str(ds.get("StudyDate", "") or ds.get("AcquisitionDate", "") or ds.get("ContentDate", "") or "")
    try:
        b = _dt.datetime.strptime(birth[:8], "%Y%m%d").date()
        s = _dt.datetime.strptime(seen[:8], "%Y%m%d").date()
    except ValueError:
        return None
    return (s - b).days / 365.25 if s >= b else None


def _species_refusal(ds: Dataset) -> str | None:
    """Why this patient is not human, or None (absent information counts as human)."""
    description = str(ds.get("PatientSpeciesDescription", "") or "").strip().upper()
    if description and description not in HUMAN_SPECIES_WORDS:
        return f"Patient Species Description is {description!r}"
    for item in ds.get("PatientSpeciesCodeSequence", None) or []:
        code = (str(item.get("CodeValue", "")), str(item.get("CodingSchemeDesignator", "")))
        if code not in HUMAN_SPECIES_CODES:
            return f"Patient Species Code is {code[0]} ({item.get('CodeMeaning', '')})"
    if ds.get("PatientBreedDescription") or ds.get("PatientBreedCodeSequence"):
        return "a Patient Breed is given"
    text = " ".join((
        _words(ds, ("StudyDescription", "SeriesDescription", "ProtocolName",
                    "AcquisitionDeviceProcessingDescription", "InstitutionName",
                    "PerformedProcedureStepDescription")),
        _code_meanings(ds, ("ProcedureCodeSequence", "PerformedProtocolCodeSequence",
                            "RequestedProcedureCodeSequence")),
    ))
    hits = sorted(set(re.findall(r"[A-Z]+", text)) & VETERINARY_WORDS)
    if hits:
        return f"veterinary terms in the procedure/protocol description ({', '.join(hits)})"
    return None


def check_header(ds: Dataset, settings: GateSettings = GateSettings()) -> None:
    """Refuse, before decoding, what the model is not meant to read (raises NotAssessable).

    Order matters only for which reason is reported when several apply: what the object is,
    then whose it is, then what it shows.
    """
    sop = str(ds.get("SOPClassUID", "") or "")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise NotAssessable(R.NON_IMAGE, f"SOP class {sop or 'missing'} carries no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 or sop in MULTI_FRAME_SOP_CLASSES:
        raise NotAssessable(R.MULTI_FRAME, f"{frames} frames (SOP class {sop})")
    if sop not in TRIAGE_SOP_CLASSES:
        raise NotAssessable(R.UNSUPPORTED_SOP_CLASS,
                            f"SOP class {sop or 'missing'} is not CR, DX or Secondary Capture")
    why = _species_refusal(ds)
    if why:
        raise NotAssessable(R.NON_HUMAN, why)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise NotAssessable(R.COLOR, f"photometric interpretation {photometric or 'missing'}")
    _check_body_part(ds)
    _check_view(ds)
    age = patient_age_years(ds)
    if age is not None and age < settings.min_age_years:
        raise NotAssessable(R.PAEDIATRIC,
                            f"patient age {age:.1f} years is under {settings.min_age_years:g}")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows and cols and min(rows, cols) < settings.min_image_size:
        raise NotAssessable(R.TOO_SMALL, f"{rows}x{cols} pixels, shorter side under {settings.min_image_size}")


def _check_body_part(ds: Dataset) -> None:
    body = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if body:
        if not any(word in body for word in CHEST_BODY_PARTS):
            raise NotAssessable(R.NON_CHEST, f"Body Part Examined is {body!r}")
        return
    regions = [(str(i.get("CodeValue", "")), str(i.get("CodeMeaning", ""))) for i in ds.get("AnatomicRegionSequence", None) or []]
    if regions and not any(code in CHEST_REGION_CODES or any(w in meaning.upper() for w in CHEST_BODY_PARTS)
                           for code, meaning in regions):
        raise NotAssessable(R.NON_CHEST, f"Anatomic Region is {regions[0][1] or regions[0][0]!r}")


def _check_view(ds: Dataset) -> None:
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view in NON_FRONTAL_VIEWS:
        raise NotAssessable(R.LATERAL_VIEW, f"View Position is {view}")
    for item in ds.get("ViewCodeSequence", None) or []:
        if str(item.get("CodeValue", "")) in LATERAL_VIEW_CODES:
            raise NotAssessable(R.LATERAL_VIEW, f"View Code is {item.get('CodeMeaning', item.CodeValue)!r}")
    if not view:
        text = _words(ds, ("SeriesDescription", "ProtocolName", "AcquisitionDeviceProcessingDescription"))
        if _LATERAL_TEXT.search(text):
            raise NotAssessable(R.LATERAL_VIEW, "series/protocol description names a lateral view")


def check_film(film: Film, settings: GateSettings = GateSettings()) -> None:
    """Pixel checks after decoding (PNG/JPEG have no header to check)."""
    h, w = film.pixels.shape
    if min(h, w) < settings.min_image_size:
        raise NotAssessable(R.TOO_SMALL, f"{h}x{w} pixels, shorter side under {settings.min_image_size}")
    if float(film.pixels.max()) - float(film.pixels.min()) < 1e-3:
        raise NotAssessable(R.UNDECODABLE, "the decoded film is blank (a single intensity)")
