"""The training manifest: one CSV row per film, the only input the trainer reads.

Columns: ``file`` and ``label`` are required; ``patient_id`` (split key; defaults to the file),
``source``, ``age``, ``sex``, ``view``, ``findings``, ``nodule_or_mass`` and ``split`` are
optional and carried through. ``label`` is ``normal``/``abnormal`` (or 0/1). ``file`` is
relative to the manifest's folder unless an explicit root is given, or absolute.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

COLUMNS = ("file", "label", "patient_id", "source", "age", "sex", "view", "findings",
           "nodule_or_mass", "split")
_LABELS = {"normal": 0, "0": 0, "abnormal": 1, "1": 1}


class ManifestError(ValueError):
    """A manifest that cannot be trained on; the message names the row."""


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
            "label": "abnormal" if self.label else "normal",
            "patient_id": self.patient_id,
            "source": self.source,
            "age": "" if self.age is None else f"{self.age:g}",
            "sex": self.sex,
            "view": self.view,
            "findings": self.findings,
            "nodule_or_mass": str(int(self.nodule_or_mass)),
            "split": self.split,
        }
        row.update(self.extra)
        return row


def parse_label(value: str) -> int:
    key = str(value).strip().lower()
    if key not in _LABELS:
        raise ManifestError(f"label {value!r} is not one of normal/abnormal/0/1")
    return _LABELS[key]


def _age(value: str | None) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    return float(str(value).strip().rstrip("Yy"))


def read_manifest(path: str | Path) -> list[Entry]:
    """Rows of a manifest CSV; a clear error for missing columns or bad labels."""
    path = Path(path)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"file", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ManifestError(f"{path}: missing column(s) {sorted(missing)}")
        entries = []
        for i, row in enumerate(reader, start=2):
            try:
                entries.append(Entry(
                    file=row["file"],
                    label=parse_label(row["label"]),
                    patient_id=(row.get("patient_id") or "").strip() or row["file"],
                    source=row.get("source") or "",
                    age=_age(row.get("age")),
                    sex=row.get("sex") or "",
                    view=row.get("view") or "",
                    findings=row.get("findings") or "",
                    nodule_or_mass=int(float(row.get("nodule_or_mass") or 0)),
                    split=row.get("split") or "",
                    extra={k: v for k, v in row.items() if k not in COLUMNS and k is not None},
                ))
            except (ManifestError, ValueError) as exc:
                raise ManifestError(f"{path} line {i}: {exc}") from None
    if not entries:
        raise ManifestError(f"{path}: no rows")
    return entries


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


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file (the manifest's identity, stored in the model metadata)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
