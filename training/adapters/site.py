"""What a site's own folders share: the labels CSV's column names and reading, the site's
label spellings, DICOM headers (view, age, sex, a pseudonymised patient id) and a cheap
PNG/JPEG check."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cxr_triage.contract.patient import parse_age_years
from cxr_triage.contract.result import NotAssessable, NotAssessableReason
from cxr_triage.training.adapters.common import DatasetError, ImportProblems


@dataclass
class Columns:
    """Names of the labels CSV's columns (``--file-column`` ...); an empty name: not present."""

    file: str = "file"
    label: str = "label"
    patient_id: str = "patient_id"
    view: str = "view"
    age: str = "age"
    sex: str = "sex"
    source: str = "source"
    findings: str = "findings"
    split: str = "split"


def hash_id(value: str) -> str:
    """A stable pseudonym for a patient id read from a DICOM header (no PHI in the manifest)."""
    return "pid-" + hashlib.sha256(value.encode()).hexdigest()[:16]


def dicom_header(path: Path):  # -> pydicom Dataset | None
    """The header of a DICOM file (no pixels), or None when it is not DICOM.

    Raises NotAssessable (undecodable, with the reason) for a Part 10 file (``DICM`` at byte
    128) whose header does not read, e.g. a truncated deflated data set (zlib's "incomplete or
    truncated stream") or a deflate bomb (refused before pydicom inflates it whole)."""
    # the worker's reader and deflate bound, imported here like read_film (manifest's start-up)
    from cxr_triage.inference.deflated import DeflateBomb, dcmread_bounded
    from cxr_triage.inference.reader import sniff_kind

    try:
        return dcmread_bounded(path, stop_before_pixels=True)
    except DeflateBomb as exc:
        raise NotAssessable(NotAssessableReason.UNDECODABLE, str(exc)) from exc
    except Exception as exc:  # any parser failure (struct, EOF, zlib, VR...) is the same
        if sniff_kind(path) != "dicom":
            return None
        raise NotAssessable(NotAssessableReason.UNDECODABLE,
                            f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc


#: the kind under which films that do not decode are left out (``manifest`` prints it)
UNDECODABLE = "film(s) that cannot be decoded (truncated or corrupt), left out"


def film_problem(path: Path) -> str | None:
    """Why the film at ``path`` cannot be decoded, or None when it decodes: the worker's own
    reader (``inference.reader.read_film``, which ``train`` uses too) decodes the pixels, so a
    truncated or corrupt file is caught here and not mid-training. About 20 ms a 1024 px film."""
    import warnings

    # the worker's reader: the one decoder of every film, shared with train and the node
    from cxr_triage.inference.reader import read_film

    try:
        with warnings.catch_warnings():  # pydicom warns on a truncated file; the reason says it
            warnings.simplefilter("ignore")
            read_film(path)
    except NotAssessable as exc:
        return str(exc)
    return None


def image_readable(path: Path) -> bool:
    """PNG/JPEG whose header Pillow can read (cheap: the pixels are not decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - touching the header is the check
        return True
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def header_fields(ds) -> dict[str, object]:
    """view, age, sex and a pseudonymised patient id from a DICOM header ('' / None when absent)."""
    pid = str(ds.get("PatientID", "") or "").strip()
    return {"view": str(ds.get("ViewPosition", "") or "").strip().upper(),
            "age": parse_age_years(str(ds.get("PatientAge", "") or "")),
            "sex": str(ds.get("PatientSex", "") or "").strip().upper(),
            "patient_id": hash_id(pid) if pid else ""}


#: the hint after a label no spelling reads (site spellings are options, not a column)
LABEL_HINT = ("labels no spelling reads: give the site's own with --abnormal-values / --normal-values "
              "(space-separated, e.g. --abnormal-values Finding Abnormal)")


def read_labels(labels: Path, cols: Columns, problems: ImportProblems, key_what: str = "file",
                key_option: str = "--file-column") -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(header, [(line, row), ...]) of a labels CSV; DatasetError when it cannot be used at all,
    naming the missing column as ``key_what`` and the option that names it (``key_option``)."""
    if not labels.is_file():
        raise DatasetError(f"labels CSV not found: {labels}")
    try:
        with labels.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = [(line, {k: (v or "") for k, v in row.items() if k is not None})
                    for line, row in enumerate(reader, start=2)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{labels}: not a readable CSV ({exc})") from None
    missing = [(f"{what} column {name!r}", option) for what, name, option in
               ((key_what, cols.file, key_option), ("label", cols.label, "--label-column")) if name not in header]
    if missing:
        raise DatasetError(f"{labels}: no {' and no '.join(m for m, _ in missing)} (columns: "
                           f"{', '.join(header) or 'none'}); name {'them' if len(missing) > 1 else 'it'} with "
                           f"{' / '.join(o for _, o in missing)}")
    if not rows:
        raise DatasetError(f"{labels}: no rows")
    return header, rows
