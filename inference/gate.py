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
from cxr_triage.inference.dicom_values import CodedEntry, coded_attribute, coded_entries
from cxr_triage.inference.orientation import header_turn, pixel_turn
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
#: View Position (0018,5101) values the model may read: every other value (LL, RL, RLD, LLD,
#: RLO, LLO of PS3.3 C.8.11.5 / C.8.11.3, or anything else) is refused
FRONTAL_VIEW_POSITIONS = frozenset({"PA", "AP"})
#: SNOMED coding schemes: SNOMED CT and the SNOMED-RT / SNOMED 3 designators of older files
SNOMED_SCHEMES = frozenset({"SCT", "SRT", "SNM3", "99SDM"})
#: View Code Sequence (0054,0220) codes of frontal projections, CID 4010 "DX View" (PS3.16),
#: as pydicom's copy of PS3.16 (pydicom.sr.codedict) gives them, with the SNOMED-RT codes older
#: files carry (pydicom's SCT <-> SRT map; R-10214 as in dcm4che). Note 399352003 is
#: lateral-medial (a mammography view), not antero-posterior.
FRONTAL_VIEW_CODES: dict[str, str] = {
    "272479007": "postero-anterior", "R-10214": "postero-anterior", "R-40888": "postero-anterior",
    "399348003": "antero-posterior", "R-10206": "antero-posterior",
    "399033003": "frontal", "R-10202": "frontal",
}
#: Patient orientation (CID 19) and its modifiers (CID 20) that leave a frontal view frontal;
#: any other (lateral decubitus, lordotic, Trendelenburg...) in Patient Orientation (Modifier)
#: Code Sequence or in a View Modifier Code Sequence is refused
NEUTRAL_POSITION_CODES: dict[str, str] = {
    "C86043": "erect", "F-10440": "erect", "102538003": "recumbent", "F-10450": "recumbent",
    "102539006": "semi-erect", "F-10460": "semi-erect", "40199007": "supine", "F-10340": "supine",
    "1240000": "prone", "F-10310": "prone", "10904000": "standing", "F-10320": "standing",
    "33586001": "sitting", "F-103A0": "sitting",
}
#: Conversion Type (0008,0064) defined terms (PS3.3 C.8.6.1, SC Equipment Module) of objects that
#: are not a radiograph: scanned document, scanned image (a photograph, a page), workstation
#: (a screen capture), drawing, synthetic image. DF (digitised film), DI (digital interface) and
#: DV (digitised video, e.g. a modality's video output) may hold a film and are read.
NOT_RADIOGRAPH_CONVERSIONS: dict[str, str] = {
    "SD": "scanned document", "SI": "scanned image", "WSD": "workstation (screen capture)",
    "DRW": "drawing", "SYN": "synthetic image",
}
#: Conversion Types that still hold a film when the Modality says so: a radiograph exported as
#: SC from a workstation (SIIM's CR chest PA sample: SC, WSD, Modality CR), or a photographed film
EXPORTED_FILM_CONVERSIONS = frozenset({"WSD", "SI"})
#: Modality (0008,0060) values of projection radiographs (PS3.3 C.7.3.1.1.1)
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG"})
#: Image Type (0008,0008) values beyond the first two that mark a page or a screen capture, as
#: archives and capture software write them (no defined terms for SC in PS3.3 C.8.6.2)
NOT_RADIOGRAPH_IMAGE_TYPES = frozenset({"SCREEN SHOT", "SCREENSHOT", "SCREEN_SHOT", "SCREEN CAPTURE",
                                        "DOCUMENT", "REPORT", "REQUISITION", "SCANNED DOCUMENT"})
#: words that, in a description, name a view other than PA/AP (used only when the header
#: carries no view attribute at all)
_NON_FRONTAL_TEXT = re.compile(
    r"\b(LAT|LATERAL|LATERALE|SEITLICH|SEITL|OBL|OBLIQUE|OBLIQ|SCHRAEG|RAO|LAO|RPO|LPO|RLO|LLO"
    r"|DECUB|DECUBITUS|RLD|LLD|LORDOTIC|LORDOTISCH|APICAL)\b"
)


@dataclass(frozen=True)
class GateSettings:
    """The configurable limits (``[inference] min_age_years``, ``min_image_size``)."""

    min_age_years: float = 16.0
    min_image_size: int = 256


def _words(ds: Dataset, keywords: tuple[str, ...]) -> str:
    return " ".join(coded_attribute(ds, k) for k in keywords)


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
    description = coded_attribute(ds, "PatientSpeciesDescription")
    if description and description not in HUMAN_SPECIES_WORDS:
        return f"Patient Species Description is {description!r}"
    for entry in coded_entries(ds, "PatientSpeciesCodeSequence"):
        if (entry.value, entry.scheme) not in HUMAN_SPECIES_CODES:
            return f"Patient Species Code is {entry.value} ({entry.meaning})"
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


def check_object(ds: Dataset) -> None:
    """Is this object a single-frame image of a class the model reads? Raises NotAssessable.

    The one place that decides on the SOP class (the lists are
    :mod:`cxr_triage.contract.sop_classes`; the reasons are docs/conformance.md's table):
    no Pixel Data, Float or Double Float Pixel Data -> ``non_image``; Number of Frames > 1 or a
    multi-frame Secondary Capture class (PS3.4 B.5, ``1.2.840.10008.5.1.4.1.1.7.1``-``.7.4``)
    -> ``multi_frame``, whatever its frame count; any other class than CR, DX or Secondary
    Capture -> ``unsupported_sop_class``. Checked in that order, on the header only.
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


def check_radiograph(ds: Dataset) -> None:
    """Refuse a page or a screen, whatever its SOP class: Conversion Type in
    :data:`NOT_RADIOGRAPH_CONVERSIONS` (WSD and SI with a radiograph's Modality excepted:
    :data:`EXPORTED_FILM_CONVERSIONS`) or an Image Type value (3rd on) in
    :data:`NOT_RADIOGRAPH_IMAGE_TYPES` -> ``not_radiograph`` (NotAssessable)."""
    conversion = coded_attribute(ds, "ConversionType")
    exported_film = (conversion in EXPORTED_FILM_CONVERSIONS
                     and coded_attribute(ds, "Modality") in RADIOGRAPH_MODALITIES)
    if conversion in NOT_RADIOGRAPH_CONVERSIONS and not exported_film:
        raise NotAssessable(R.NOT_RADIOGRAPH, f"Conversion Type is {conversion} "
                            f"({NOT_RADIOGRAPH_CONVERSIONS[conversion]}), not a digitised film")
    image_type = ds.get("ImageType") or []
    values = [str(v).strip().upper() for v in ([image_type] if isinstance(image_type, str) else image_type)]
    hits = [v for v in values[2:] if v in NOT_RADIOGRAPH_IMAGE_TYPES]
    if hits:
        raise NotAssessable(R.NOT_RADIOGRAPH, f"Image Type names a {hits[0].lower()}")


def check_header(ds: Dataset, settings: GateSettings = GateSettings()) -> None:
    """Refuse, before decoding, what the model is not meant to read (raises NotAssessable).

    Order matters only for which reason is reported when several apply: what the object is
    (:func:`check_object`), then whose it is, then what it shows.
    """
    check_object(ds)
    check_radiograph(ds)
    why = _species_refusal(ds)
    if why:
        raise NotAssessable(R.NON_HUMAN, why)
    photometric = coded_attribute(ds, "PhotometricInterpretation")
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
    body = coded_attribute(ds, "BodyPartExamined")
    if body:
        if not any(word in body for word in CHEST_BODY_PARTS):
            raise NotAssessable(R.NON_CHEST, f"Body Part Examined is {body!r}")
        return
    regions = coded_entries(ds, "AnatomicRegionSequence")
    if regions and not any(r.value in CHEST_REGION_CODES or any(w in r.meaning.upper() for w in CHEST_BODY_PARTS)
                           for r in regions):
        raise NotAssessable(R.NON_CHEST, f"Anatomic Region is {regions[0].meaning or regions[0].value!r}")


def _is_frontal_code(entry: CodedEntry) -> bool:
    return entry.scheme in SNOMED_SCHEMES and entry.value in FRONTAL_VIEW_CODES


def _is_neutral_position(entry: CodedEntry) -> bool:
    return entry.value in NEUTRAL_POSITION_CODES and (entry.scheme in SNOMED_SCHEMES or entry.scheme == "NCIT")


def _check_view(ds: Dataset) -> None:
    """Frontal (PA or AP) views only, decided from an allow-list in every attribute that carries
    the view: View Position (0018,5101); View Code Sequence (0054,0220, CID 4010) and its View
    Modifier Code Sequence (0054,0222, CID 4011); Patient Orientation Code Sequence (0054,0410,
    CID 19) and its modifiers (0054,0412, CID 20: decubitus, lordotic...); Projection Eponymous
    Name Code Sequence (0018,5104, CID 4012: named special projections). Only when none of them
    is present do the series/protocol descriptions decide, by the words they use. Every refusal
    names the attribute (reason ``lateral_view``: the contract's code for "not a frontal view").
    """
    view = coded_attribute(ds, "ViewPosition")
    if view and view not in FRONTAL_VIEW_POSITIONS:
        raise NotAssessable(R.LATERAL_VIEW, f"View Position is {view!r}, not a frontal view (PA or AP)")
    views = coded_entries(ds, "ViewCodeSequence")
    for entry in views:
        if not _is_frontal_code(entry):
            raise NotAssessable(R.LATERAL_VIEW, f"View Code Sequence is {entry.describe()}, not a frontal "
                                "view (CID 4010: 272479007 postero-anterior, 399348003 antero-posterior)")
    for item in ds.get("ViewCodeSequence", None) or []:
        for entry in coded_entries(item, "ViewModifierCodeSequence"):
            if not _is_neutral_position(entry):
                raise NotAssessable(R.LATERAL_VIEW, f"View Modifier Code Sequence is {entry.describe()}")
    orientation = ds.get("PatientOrientationCodeSequence", None) or []
    for entry in coded_entries(ds, "PatientOrientationCodeSequence"):
        if not _is_neutral_position(entry):
            raise NotAssessable(R.LATERAL_VIEW, f"Patient Orientation Code Sequence is {entry.describe()}")
    for item in orientation:
        for entry in coded_entries(item, "PatientOrientationModifierCodeSequence"):
            if not _is_neutral_position(entry):
                raise NotAssessable(R.LATERAL_VIEW,
                                    f"Patient Orientation Modifier Code Sequence is {entry.describe()}")
    eponyms = coded_entries(ds, "ProjectionEponymousNameCodeSequence")
    if eponyms:
        raise NotAssessable(R.LATERAL_VIEW, f"Projection Eponymous Name Code Sequence is {eponyms[0].describe()}, "
                            "a special projection")
    if not view and not views:
        text = _words(ds, ("SeriesDescription", "ProtocolName", "AcquisitionDeviceProcessingDescription"))
        hit = _NON_FRONTAL_TEXT.search(text)
        if hit:
            raise NotAssessable(R.LATERAL_VIEW, f"no View Position or View Code, and the series/protocol "
                                f"description names a non-frontal view ({hit.group(1)!r})")


def check_film(film: Film, settings: GateSettings = GateSettings()) -> None:
    """Pixel checks after decoding (PNG/JPEG have no header to check)."""
    h, w = film.pixels.shape
    if min(h, w) < settings.min_image_size:
        raise NotAssessable(R.TOO_SMALL, f"{h}x{w} pixels, shorter side under {settings.min_image_size}")
    if float(film.pixels.max()) - float(film.pixels.min()) < 1e-3:
        raise NotAssessable(R.UNDECODABLE, "the decoded film is blank (a single intensity)")
    check_upright(film)


def check_upright(film: Film) -> None:
    """A film whose header does not give its orientation (no usable Patient Orientation; every
    PNG/JPEG) is checked from its pixels (:func:`pixel_turn`): clearly turned -> ``not_upright``.
    Films the header orients were turned upright by the reader."""
    if film.dataset is not None and header_turn(film.dataset) is not None:
        return
    k = pixel_turn(film.pixels)
    if k:
        raise NotAssessable(R.NOT_UPRIGHT, f"no Patient Orientation, and the film looks turned "
                            f"{90 * k} degrees clockwise (the layout of its pixels)")
