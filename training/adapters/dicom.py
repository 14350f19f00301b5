"""A site's folder of DICOM films labelled by a CSV keyed by accession number or UID."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from cxr_triage.contract.manifest import ManifestError, label_reader
from cxr_triage.contract.result import NotAssessable
from cxr_triage.training.adapters.common import FRONTAL_VIEWS, DatasetError, ImportProblems
from cxr_triage.training.adapters.site import (
    UNDECODABLE,
    Columns,
    dicom_header,
    film_problem,
    header_fields,
    read_labels,
)
from cxr_triage.training.manifest import Entry

DICOM_KEYS = {"accession_number": "AccessionNumber", "sop_instance_uid": "SOPInstanceUID",
              "study_instance_uid": "StudyInstanceUID"}


def dicom_folder(root: Path, labels: Path | None = None, key: str = "accession_number", key_column: str = "",
                 columns: Columns | None = None, source: str = "", abnormal_values: Sequence[str] = (),
                 normal_values: Sequence[str] = (), min_age: float = 16.0,
                 problems: ImportProblems | None = None) -> list[Entry]:
    """A folder of DICOM films (any layout, searched recursively) labelled by a CSV keyed by
    accession number, SOP Instance UID or Study Instance UID (``key``; the CSV's column is
    ``key_column``, default the key's name). Every frontal film whose key has a row gets that
    row's label (a study's films all get the study's label); view, age and sex come from the
    header, the patient id is a SHA-256 pseudonym of the header's Patient ID.

    Left out and counted in ``problems`` (named by file and by key, as a user looks them up):
    files that are not DICOM, films without a row, films whose row's label no spelling reads,
    laterals, rows no film matches. DatasetError when nothing is usable."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"no such folder: {root}")
    if key not in DICOM_KEYS:
        raise DatasetError(f"--key must be one of {', '.join(DICOM_KEYS)}")
    cols = columns or Columns()
    problems = problems if problems is not None else ImportProblems()
    labels = Path(labels) if labels else root / "labels.csv"
    key_column = key_column or key
    cols_for_check = Columns(file=key_column, label=cols.label)
    header, rows = read_labels(labels, cols_for_check, problems, key, "--key-column")
    name_of = label_reader(abnormal_values, normal_values)
    by_key: dict[str, tuple[int, int, dict[str, str]]] = {}
    unreadable: dict[str, str] = {}   # key -> the label as written
    for line, row in rows:
        k = row.get(key_column, "").strip()
        where = f"{labels.name}:{line}"
        if not k:
            problems.add(f"row(s) without {key_column}", where)
            continue
        try:
            by_key[k] = (line, name_of(row.get(cols.label, ""), where), row)
        except (ManifestError, ValueError):
            unreadable[k] = row.get(cols.label, "")
    entries: list[Entry] = []
    matched: set[str] = set()
    src_default = source or root.resolve().name
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.resolve() == labels.resolve() or p.suffix.lower() in (".csv", ".txt", ".json", ".md"):
            continue
        rel = str(p.relative_to(root))
        try:
            ds = dicom_header(p)
        except NotAssessable as exc:
            problems.add(UNDECODABLE, f"{rel} ({exc})")
            continue
        if ds is None:
            problems.add("file(s) that are not DICOM, not read", rel)
            continue
        k = str(ds.get(DICOM_KEYS[key], "") or "").strip()
        if k in unreadable:
            matched.add(k)
            problems.add("film(s) whose row has an unreadable label", f"{rel} ({key} {k}: {unreadable[k]!r})")
            continue
        if k not in by_key:
            problems.add(f"DICOM film(s) whose {key} has no row in the labels CSV, not read",
                         f"{rel} ({key} {k or 'empty'})")
            continue
        matched.add(k)
        _, label, row = by_key[k]
        info = header_fields(ds)
        view = str(info["view"])
        if view not in FRONTAL_VIEWS:
            problems.add("lateral or other non-frontal film(s), left out", f"{rel} ({view}, {key} {k})")
            continue
        problem = film_problem(p)
        if problem:
            problems.add(UNDECODABLE, f"{rel} ({problem})")
            continue
        age = info["age"] if isinstance(info["age"], float) else None
        src_col = cols.source if cols.source in header else ""
        entry = Entry(file=rel, label=label, patient_id=str(info["patient_id"] or ""),
                      source=(row.get(src_col, "").strip() if src_col else "") or src_default, age=age,
                      sex=str(info["sex"]), view=view,
                      findings=row.get(cols.findings, "").strip() if cols.findings in header else "")
        if age is not None and age < min_age:
            entry.split = "excluded_paediatric"
        entries.append(entry)
    for k, (line, _, _) in by_key.items():
        if k not in matched:
            problems.add(f"row(s) whose {key} matches no DICOM film", f"{k} ({labels.name}:{line})")
    for k in sorted(set(unreadable) - matched):
        problems.add("row(s) with an unreadable label", f"{k} ({unreadable[k]!r}, no DICOM film either)")
    if not entries:
        raise DatasetError(f"{root}: no usable DICOM film ({'; '.join(problems.lines()) or 'no files'})")
    return entries
