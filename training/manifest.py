"""The training manifest: one CSV row per film, the only input the trainer reads.

The format (columns, label spellings, ages) is :mod:`cxr_triage.contract.manifest`, shared
with evaluation; this module builds the trainer's :class:`Entry` from its rows. ``patient_id``
(split key) defaults to the file. ``file`` is relative to the manifest's folder unless an
explicit root is given, or absolute.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from cxr_triage.contract import manifest as _manifest
from cxr_triage.contract.manifest import ManifestError, ManifestRow  # noqa: F401  (ManifestError: re-exported)

#: the columns the trainer writes (the shared format's, less ``site``: a manifest with a ``site``
#: column and no ``source`` column is read with ``site`` as the source, as evaluation does)
COLUMNS = ("file", "label", "patient_id", "source", "age", "sex", "view", "findings",
           "nodule_or_mass", "split")


@dataclass
class Entry:
    """One film of a manifest. ``label`` is 1 for abnormal, 0 for normal."""

    file: str
    label: int
    patient_id: str = ""
    source: str = ""
    age: float | None = None
    sex: str = ""
    view: str = ""
    findings: str = ""
    nodule_or_mass: int = 0
    split: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def to_row(self) -> dict[str, str]:
        row = {
            "file": self.file,
            "label": _manifest.label_text(self.label),
            "patient_id": self.patient_id,
            "source": self.source,
            "age": _manifest.age_text(self.age),
            "sex": self.sex,
            "view": self.view,
            "findings": self.findings,
            "nodule_or_mass": str(int(self.nodule_or_mass)),
            "split": self.split,
        }
        row.update(self.extra)
        return row


def parse_label(value: str) -> int:
    """1 abnormal, 0 normal (the shared spellings, :mod:`cxr_triage.contract.manifest`)."""
    return _manifest.parse_label(value)


def entry_from_row(row: ManifestRow) -> Entry:
    """The trainer's view of one parsed manifest row."""
    return Entry(
        file=row.file, label=row.label, patient_id=row.patient_id or row.file, source=row.source or row.site,
        age=row.age, sex=row.sex, view=row.view, findings=row.findings,
        nodule_or_mass=int(row.nodule_or_mass), split=row.split,
        extra={k: v for k, v in row.raw.items() if k not in COLUMNS},
    )


def read_manifest(path: str | Path) -> list[Entry]:
    """Rows of a manifest CSV; a clear error (ManifestError) for missing columns or bad labels."""
    return [entry_from_row(r) for r in _manifest.read_manifest_rows(path)]


def write_manifest(entries: Iterable[Entry], path: str | Path) -> Path:
    entries = list(entries)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra_cols = sorted({k for e in entries for k in e.extra})
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*COLUMNS, *extra_cols])
        writer.writeheader()
        for e in entries:
            writer.writerow(e.to_row())
    return path


def resolve(entry: Entry, root: Path) -> Path:
    p = Path(entry.file)
    return p if p.is_absolute() else root / p
