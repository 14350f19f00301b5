"""Header conformance of the result objects (SR and summary image): what they copy from the
received films and what they say about themselves.

- :func:`conform_for_report` makes a received header copyable (highdicom refuses dates and
  character sets real modalities write);
- :func:`source_headers` copies a film's header without its pixels, with the Type 2
  patient/study attributes present, so the PACS files the result into the film's study;
- the equipment: Manufacturer, Software Versions, the IHE AI Results "Processing Algorithm"
  contributing equipment and the device UID of the model;
- :func:`header_description`: a Series Description carrying the decision.

Lowest layer of the result objects after ``sr_codes``: it builds no content tree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydicom import Dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, DT, TM

from cxr_triage import __version__
from cxr_triage.contract.model_file import ModelMetadata
from cxr_triage.contract.result import Decision, NotAssessableReason
from cxr_triage.dicom_node.results import sr_codes as C
from cxr_triage.dicom_node.results.header_text import conform_text, read_unknown_charset_as_utf8

SOFTWARE_NAME = "cxr-triage"
_LO_MAX = 64
_HEADER_LABELS = {
    Decision.SUSPICIOUS: "SUSPICIOUS",
    Decision.LIKELY_NORMAL: "LIKELY NORMAL",
    Decision.NOT_ASSESSABLE: "NOT ASSESSABLE",
}
# Type 2 patient/study attributes highdicom reads from the first source: present-but-empty
# is valid DICOM, absent would fail the build (real headers omit them, e.g. the NIH samples).
_TYPE2_COPIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)
_AGE = re.compile(r"\d{3}[DWMY]")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_TEMPORAL = {"DA": DA, "DT": DT, "TM": TM}


def conform_for_report(ds: Dataset) -> list[str]:
    """Make a received header copyable into the result objects (in place).

    highdicom refuses what real modalities write — a date as ``17.08.1923``, a character
    set it does not list (``\\ISO 2022 IR 87``, a misspelt one) — and such a study would never
    get a result. Text is decoded with the declared set (pydicom falls back to its default
    for an unknown one) and re-declared as UTF-8 (PS3.3 C.12.1.1.2); a set no library knows
    ("NONE", "Not Supplied") whose text is valid UTF-8 is read as UTF-8, so the bytes and the
    name stay the same (:func:`~.header_text.read_unknown_charset_as_utf8`). Unreadable dates and times
    (PS3.5 6.2 DA/DT/TM) are blanked. Text values a strict PACS refuses — longer than their VR
    allows, or holding control characters (PS3.5 6.2) — are made conformant
    (:func:`~.header_text.conform_text`). Only the in-memory copy changes: the spool keeps the file as
    received. Returns the keywords changed; never log their values (PHI).
    """
    changed = ["SpecificCharacterSet"] if read_unknown_charset_as_utf8(ds) or _reencode_if_unlisted(ds) else []
    changed += conform_text(ds)
    for elem in ds.iterall():
        parse = _TEMPORAL.get(elem.VR)
        if parse is None or elem.value in (None, ""):
            continue
        try:
            for value in (elem.value if elem.VM > 1 else [elem.value]):
                if value not in (None, ""):
                    parse(str(value))
        except ValueError:
            elem.value = ""
            changed.append(elem.keyword or str(elem.tag))
    return changed


def _reencode_if_unlisted(ds: Dataset) -> bool:
    """Decode ``ds`` and declare ISO_IR 192 when its Specific Character Set is not one value
    highdicom lists; True when it did."""
    from highdicom.enum import SpecificCharacterSetValues

    charset = ds.get("SpecificCharacterSet")
    if charset is None:
        return False
    values = [charset] if isinstance(charset, str) else list(charset)
    try:
        ok = len(values) == 1 and all(SpecificCharacterSetValues(v) for v in values)
    except ValueError:
        ok = False
    if not ok:
        ds.decode()
        ds.SpecificCharacterSet = "ISO_IR 192"
    return not ok


def source_headers(sources: Sequence[Dataset]) -> list[Dataset]:
    """Pixel-free copies of the sources (deduplicated by SOP Instance UID) with the Type 2
    patient/study attributes highdicom copies made present. The copies share the sources'
    data elements (no deep copy: the pixel data is most of a film's bytes)."""
    out: dict[str, Dataset] = {}
    for src in sources:
        uid = str(src.SOPInstanceUID)
        if uid in out:
            continue
        header = Dataset()
        for elem in src:
            if elem.keyword not in _PIXEL_KEYWORDS:
                header.add(elem)
        for keyword in _TYPE2_COPIED:
            if keyword not in header or header[keyword].value is None:
                setattr(header, keyword, "")
        _drop_invalid_copied_values(header)
        out[uid] = header
    return list(out.values())


def _drop_invalid_copied_values(header: Dataset) -> None:
    """Real headers carry values their VR forbids (NIH: Patient's Age "62"); copied into the
    SR they would make it fail validation. Type 3 ones are dropped, Type 2 ones emptied,
    rather than guessed (is "62" years or months?)."""
    age = header.get("PatientAge")
    if age is not None and not _AGE.fullmatch(str(age)):
        del header.PatientAge
    if str(header.get("PatientSex", "")) not in {"M", "F", "O", ""}:
        header.PatientSex = ""


#: A not-assessable reason in at most 16 characters: "AI triage: NOT ASSESSABLE (...) - not for
#: diagnosis" must fit LO's 64 characters (PS3.5 6.2) with every reason, where the code
#: meanings (up to 26 characters) do not.
SHORT_REASONS: dict[NotAssessableReason, str] = {
    NotAssessableReason.NON_IMAGE: "not an image",
    NotAssessableReason.UNSUPPORTED_SOP_CLASS: "unsupported SOP",
    NotAssessableReason.MULTI_FRAME: "multi-frame",
    NotAssessableReason.COLOR: "not grayscale",
    NotAssessableReason.LATERAL_VIEW: "lateral view",
    NotAssessableReason.NON_CHEST: "not a chest",
    NotAssessableReason.PAEDIATRIC: "below min. age",
    NotAssessableReason.NON_HUMAN: "not human",
    NotAssessableReason.TOO_SMALL: "image too small",
    NotAssessableReason.UNDECODABLE: "not decodable",
    NotAssessableReason.NOT_RADIOGRAPH: "not a radiograph",
}


def short_reason(reason: NotAssessableReason) -> str:
    """:data:`SHORT_REASONS`' name of ``reason``, else its code meaning in lower case."""
    return SHORT_REASONS.get(reason) or C.REASON_CODES[reason].meaning.lower()


def header_description(prefix: str, decision: Decision,
                       reasons: Sequence[NotAssessableReason] = (), fallback_prefix: str = "") -> str:
    """A Series Description (LO, at most 64 characters) that carries the decision, e.g.
    "AI triage: SUSPICIOUS - research, not for diagnosis", so that PACS lists, routing
    rules and viewers that never open the content tree still show it.

    A not-assessable reason that does not fit after ``prefix`` is shown after
    ``fallback_prefix`` (the summary image's "AI triage summary" falls back to the SR's "AI
    triage"), so the summary image states the same reason as the SR, word for word."""
    label = _HEADER_LABELS[decision]
    tails = (" - research, not for diagnosis", " - not for diagnosis")
    shown: list[str] = []
    for names in ([C.REASON_CODES[r].meaning.lower() for r in reasons], [short_reason(r) for r in reasons]):
        shown += [", ".join(names)] if names else []
        if len(names) > 1:
            shown.append(f"{names[0]}, +{len(names) - 1}")
    # the reason matters more than the word "research" or the prefix's own word; the decision most of all
    candidates = [f"{p}: {label} ({r}){t}" for p in (prefix, fallback_prefix) if p for r in shown for t in tails]
    candidates += [f"{prefix}: {label}{t}" for t in tails]
    for text in candidates:
        if len(text) <= _LO_MAX:
            return text
    return candidates[-1][:_LO_MAX]


def device_uid(meta: ModelMetadata) -> str:
    """A UID fixed for a model name and version (IHE AIR: change it when the model changes)."""
    return str(generate_uid(entropy_srcs=["cxr-triage device", meta.name, meta.version]))


def software_versions(meta: ModelMetadata) -> list[str]:
    """The Software Versions values of every object the node writes (SR and summary image):
    ``["cxr-triage <package version>", "<model name> <model version>"]``."""
    return [f"cxr-triage {__version__}", f"{meta.name} {meta.version}"]


def set_series_datetime(ds: Dataset) -> None:
    """Series Date/Time: when this result series was made (its Content Date/Time)."""
    ds.SeriesDate = ds.get("ContentDate") or ds.get("InstanceCreationDate")
    ds.SeriesTime = ds.get("ContentTime") or ds.get("InstanceCreationTime")


def mark_equipment(ds: Dataset, meta: ModelMetadata) -> None:
    """What every result object says about its maker: Software Versions (0018,1020) naming
    the software and the model (multi-valued: highdicom takes a single value), the IHE
    contributing equipment (:func:`add_ihe_algorithm_equipment`) and Series Date/Time."""
    ds.add_new(0x00181020, "LO", software_versions(meta))  # Software Versions
    add_ihe_algorithm_equipment(ds, meta)
    set_series_datetime(ds)


def add_ihe_algorithm_equipment(sr: Dataset, meta: ModelMetadata) -> None:
    """IHE AI Results: the algorithm as Contributing Equipment ("Processing Algorithm"), with the
    model's name (Manufacturer's Model Name) and version (Software Versions); the SR and the
    summary image both carry it.

    highdicom's ContributingEquipment accepts only CID 7005 purposes, hence pydicom here.
    """
    purpose = Dataset()
    purpose.CodeValue = C.IHE_PROCESSING_ALGORITHM.value
    purpose.CodingSchemeDesignator = C.IHE_PROCESSING_ALGORITHM.scheme_designator
    purpose.CodeMeaning = C.IHE_PROCESSING_ALGORITHM.meaning
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = meta.manufacturer or SOFTWARE_NAME
    item.ManufacturerModelName = meta.name
    item.SoftwareVersions = meta.version
    item.DeviceUID = device_uid(meta)
    item.ContributionDescription = "AI chest X-ray triage (research tool, not for diagnosis)"
    if "ContributingEquipmentSequence" not in sr:
        sr.ContributingEquipmentSequence = []
    sr.ContributingEquipmentSequence.append(item)
