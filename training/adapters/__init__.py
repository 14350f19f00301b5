"""Turn the standard local layouts of public chest X-ray datasets into manifest entries.

Each adapter reads the dataset's own label files (never guesses labels from folder names
unless that *is* the dataset's labelling, as for Shenzhen/Montgomery), keeps frontal films
only, and sets ``label`` to abnormal when any finding is present. File paths in the entries
are relative to the dataset root. Binary "normal vs abnormal" follows each dataset's own
"No Finding" notion; uncertain CheXpert/MIMIC labels (-1) count as abnormal by default
(sensitivity first), or are dropped with ``uncertain="drop"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from cxr_triage.training.adapters.common import (
    DICOM_SUFFIXES,
    FRONTAL_VIEWS,
    IMAGE_SUFFIXES,
    DatasetError,
    ImportProblems,
)
from cxr_triage.training.adapters.dicom import DICOM_KEYS, dicom_folder
from cxr_triage.training.adapters.folder import folder
from cxr_triage.training.adapters.public import (
    CHEXPERT_FINDINGS,
    chexpert,
    jsrt,
    mimic_cxr_jpg,
    nih_chestxray14,
    shenzhen_montgomery,
    vindr_cxr,
)
from cxr_triage.training.adapters.shared import (
    FIELD_MM,
    LABEL_CONFLICT,
    NIH_FINDINGS,
    NODULE_READ_NORMAL,
    SHARED_FOLDERS,
    TEACHER_PREFIX,
    shared_data,
)
from cxr_triage.training.adapters.site import Columns
from cxr_triage.training.manifest import Entry

__all__ = ["ADAPTERS", "CHEXPERT_FINDINGS", "DICOM_KEYS", "DICOM_SUFFIXES", "FRONTAL_VIEWS", "IMAGE_SUFFIXES",
           "FIELD_MM", "LABEL_CONFLICT", "NIH_FINDINGS", "NODULE_READ_NORMAL", "SHARED_FOLDERS", "TEACHER_PREFIX", "Columns", "DatasetError", "ImportProblems",
           "chexpert", "dicom_folder", "drop_missing", "folder", "jsrt", "mimic_cxr_jpg", "nih_chestxray14",
           "shared_data", "shenzhen_montgomery", "vindr_cxr"]


def drop_missing(entries: list[Entry], root: Path, problems: ImportProblems) -> list[Entry]:
    """The entries whose film exists under ``root``; the others are counted in ``problems``."""
    keep = []
    for e in entries:
        p = Path(e.file)
        if (p if p.is_absolute() else root / p).is_file():
            keep.append(e)
        else:
            problems.add("film(s) listed by the dataset's label file but not found, left out", e.file)
    return keep


ADAPTERS: dict[str, Callable[..., list[Entry]]] = {
    "nih": nih_chestxray14,
    "chexpert": chexpert,
    "mimic": mimic_cxr_jpg,
    "vindr": vindr_cxr,
    "shenzhen-montgomery": shenzhen_montgomery,
    "jsrt": jsrt,
    "shared": shared_data,
    "folder": folder,
    "dicom": dicom_folder,
}
