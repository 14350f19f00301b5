"""A site's own folder of films (PNG, JPEG or DICOM) with a labels CSV, one row per film."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from cxr_triage.contract.manifest import ManifestError, label_reader, parse_age
from cxr_triage.contract.result import NotAssessable
from cxr_triage.training.adapters.common import FRONTAL_VIEWS, IMAGE_SUFFIXES, DatasetError, ImportProblems
from cxr_triage.training.adapters.site import (
    UNDECODABLE,
    Columns,
    dicom_header,
    film_problem,
    header_fields,
    image_readable,
    read_labels,
)
from cxr_triage.training.manifest import Entry


def folder(root: Path, labels: Path | None = None, columns: Columns | None = None, source: str = "",
           abnormal_values: Sequence[str] = (), normal_values: Sequence[str] = (), min_age: float = 16.0,
           check_files: bool = True, problems: ImportProblems | None = None) -> list[Entry]:
    """A site's own folder of films (PNG, JPEG or DICOM) and a labels CSV (default
    ``<root>/labels.csv``), one row per film.

    ``columns`` names the CSV's columns: file (relative to ``root``, or absolute) and label are
    required; patient id, view, age (years), sex, source, findings and split are read when the
    CSV has them. DICOM films without those columns get view, age and sex from their header and
    a SHA-256 pseudonym of the header's Patient ID. ``source`` (default: the column, else the
    folder's name) is the data-source name every report groups by. Labels: the shared spellings
    (normal/abnormal, 0/1, ...) or the site's own (``abnormal_values`` / ``normal_values``).
    Under ``min_age``: ``split="excluded_paediatric"``; lateral views are left out.

    Rows that cannot be used (no such file, unreadable film, bad label, duplicate, lateral) are
    left out and counted in ``problems``, and so are films in the folder without a row.
    Raises DatasetError when the labels CSV cannot be used or no row is usable.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"no such folder: {root}")
    cols = columns or Columns()
    problems = problems if problems is not None else ImportProblems()
    labels = Path(labels) if labels else root / "labels.csv"
    header, rows = read_labels(labels, cols, problems)
    name_of = label_reader(abnormal_values, normal_values)
    src_default = source or root.resolve().name
    entries: list[Entry] = []
    seen: set[str] = set()
    for line, row in rows:
        where = f"{labels.name}:{line}"
        name = row.get(cols.file, "").strip()
        if not name:
            problems.add("row(s) without a file name", where)
            continue
        try:
            label = name_of(row.get(cols.label, ""), where)
        except (ManifestError, ValueError):
            problems.add("row(s) with an unreadable label", f"{name} ({where}: {row.get(cols.label, '')!r})")
            continue
        path = Path(name) if Path(name).is_absolute() else root / name
        rel = name if not Path(name).is_absolute() else str(path)
        if rel in seen:
            problems.add("duplicate row(s), first kept", f"{name} ({where})")
            continue
        seen.add(rel)

        def col(key: str, row: dict[str, str] = row) -> str:
            c = getattr(cols, key)
            return row.get(c, "").strip() if c and c in header else ""

        info: dict[str, object] = {"view": col("view").upper(), "age": parse_age(col("age")),
                                   "sex": col("sex").upper(), "patient_id": col("patient_id")}
        if check_files:
            if not path.is_file():
                problems.add("film(s) not found", rel)
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                if not image_readable(path):
                    problems.add("film(s) not readable as PNG/JPEG", rel)
                    continue
            else:
                try:
                    ds = dicom_header(path)
                except NotAssessable as exc:
                    problems.add(UNDECODABLE, f"{rel} ({exc})")
                    continue
                if ds is None:
                    problems.add("film(s) neither PNG/JPEG nor DICOM", rel)
                    continue
                for k, v in header_fields(ds).items():
                    if not info.get(k):
                        info[k] = v
        view = str(info["view"] or "")
        if view not in FRONTAL_VIEWS:
            problems.add("lateral or other non-frontal film(s), left out", f"{rel} ({view})")
            continue
        problem = film_problem(path) if check_files else None
        if problem:
            problems.add(UNDECODABLE, f"{rel} ({problem})")
            continue
        age = info["age"] if isinstance(info["age"], float) else None
        entry = Entry(file=rel, label=label, patient_id=str(info["patient_id"] or ""),
                      source=col("source") or src_default, age=age, sex=str(info["sex"] or ""), view=view,
                      findings=col("findings"), split=col("split"))
        if age is not None and age < min_age:
            entry.split = "excluded_paediatric"
        entries.append(entry)
    if check_files:
        listed = {(root / e.file).resolve() for e in entries} | {
            (root / r.get(cols.file, "").strip()).resolve() for _, r in rows if r.get(cols.file, "").strip()}
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix.lower() in (*IMAGE_SUFFIXES, ".dcm", ".dicom") \
                    and p.resolve() not in listed and p.resolve() != labels.resolve():
                problems.add("film(s) in the folder without a row in the labels CSV, not read",
                             str(p.relative_to(root)))
    if not entries:
        raise DatasetError(f"{labels}: no usable film ({'; '.join(problems.lines()) or 'no rows'})")
    return entries
