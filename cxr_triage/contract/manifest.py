"""The film manifest: one CSV row per film with its ground truth, the one format that training
and evaluation both read.

Columns: ``file`` and ``label`` are required; ``patient_id`` (split key and bootstrap cluster),
``site``, ``source``, ``age``, ``sex``, ``view``, ``findings`` (``|``-separated),
``nodule_or_mass`` and ``split`` are optional; any other column is carried through as ``extra``.

* ``label``: one of :data:`POSITIVE_LABELS` (abnormal) or :data:`NEGATIVE_LABELS` (normal),
  case-insensitive (``normal``/``abnormal``/``0``/``1`` and a few synonyms).
* ``age``: years, read by :func:`cxr_triage.contract.patient.parse_age_years` (``"45"``,
  ``"045Y"``, ``"006M"``...); a plain decimal number of years (``"45.5"``) also reads; anything
  else is unknown (None).
* ``nodule_or_mass``: true for ``1``/``true``/``yes`` (and ``1.0``), false otherwise.
* ``file``: as written (relative to the manifest's folder unless absolute); never empty.

Only the parsing lives here: the stages build their own objects (``training.manifest.Entry``,
``evaluation.sources.Film``) from :class:`ManifestRow`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from cxr_triage.contract.patient import parse_age_years

#: The columns with a meaning; others are carried through.
COLUMNS: tuple[str, ...] = ("file", "label", "patient_id", "site", "source", "age", "sex", "view",
                            "findings", "nodule_or_mass", "split")
REQUIRED: tuple[str, ...] = ("file", "label")
#: the shared spellings of a label (in the order the commands' --help lists them)
POSITIVE_SPELLINGS: tuple[str, ...] = ("abnormal", "1", "true", "yes", "positive", "suspicious")
NEGATIVE_SPELLINGS: tuple[str, ...] = ("normal", "0", "false", "no", "negative")
POSITIVE_LABELS = frozenset(POSITIVE_SPELLINGS)
NEGATIVE_LABELS = frozenset(NEGATIVE_SPELLINGS)
_TRUE = frozenset({"1", "1.0", "true", "yes"})


class ManifestError(ValueError):
    """A manifest that cannot be read as given; the message names the file and line."""


def parse_label(value: object, where: str = "") -> int:
    """1 for an abnormal label, 0 for a normal one; ManifestError naming ``where`` otherwise."""
    v = str(value if value is not None else "").strip().lower()
    if v in POSITIVE_LABELS:
        return 1
    if v in NEGATIVE_LABELS:
        return 0
    prefix = f"{where}: " if where else ""
    raise ManifestError(f"{prefix}label {value!r} is neither normal nor abnormal")


def label_reader(abnormal_values: Sequence[str], normal_values: Sequence[str]) -> Callable[[str, str], int]:
    """A reader of label text (value, where) -> 1 (abnormal) / 0 (normal): the one definition of
    the site spellings behind ``manifest`` and ``reconcile``'s ``--abnormal-values`` /
    ``--normal-values``. ManifestError naming ``where`` for an empty or unread label.

    Without site spellings: the manifest's shared ones (normal/abnormal, 0/1, ...). With
    ``abnormal_values`` only: those are abnormal, any other non-empty value normal; with
    ``normal_values`` only: the reverse; with both: a value in neither is an error."""
    abn = {v.strip().lower() for v in abnormal_values if v.strip()}
    nor = {v.strip().lower() for v in normal_values if v.strip()}

    def read(value: str, where: str) -> int:
        v = (value or "").strip().lower()
        if not v:
            raise ManifestError(f"{where}: empty label")
        if not abn and not nor:
            try:
                return parse_label(value, where)
            except ManifestError as exc:
                raise ManifestError(f"{exc}; give the site's spellings with --abnormal-values / "
                                    "--normal-values (space-separated)") from None
        if v in abn or (nor and not abn and v not in nor):
            return 1
        if v in nor or (abn and not nor):
            return 0
        raise ManifestError(f"{where}: label {value!r} is in neither --abnormal-values nor --normal-values")

    return read


def label_text(label: int) -> str:
    """How a label is written back: ``abnormal`` / ``normal``."""
    return "abnormal" if int(label) else "normal"


def parse_age(value: object) -> float | None:
    """A manifest's age in years (see the module text); None when empty or unreadable."""
    age = parse_age_years(value)
    if age is not None:
        return age
    try:
        years = float(str(value if value is not None else "").strip())
    except ValueError:
        return None
    return years if math.isfinite(years) and years >= 0 else None


def age_text(age: float | None) -> str:
    """How an age is written back (``"45"``, ``"0.5"``; empty when unknown)."""
    return "" if age is None else f"{age:g}"


def parse_flag(value: object) -> bool:
    """``nodule_or_mass``-style yes/no column."""
    return str(value if value is not None else "").strip().lower() in _TRUE


@dataclass
class ManifestRow:
    """One parsed manifest row. ``patient_id`` is as written (may be empty: the stage decides
    the default); ``raw`` is the whole CSV row as read, ``extra`` its columns outside COLUMNS."""

    line: int
    file: str
    label: int
    patient_id: str = ""
    site: str = ""
    source: str = ""
    age: float | None = None
    sex: str = ""
    view: str = ""
    findings: str = ""
    nodule_or_mass: bool = False
    split: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)


def parse_row(row: dict[str, str | None], where: str, line: int = 0) -> ManifestRow:
    """One CSV row (``csv.DictReader`` dict) -> ManifestRow; ManifestError naming ``where``."""
    def text(key: str) -> str:
        return (row.get(key) or "").strip()

    name = text("file")
    if not name:
        raise ManifestError(f"{where}: empty file name")
    raw = {k: (v or "") for k, v in row.items() if k is not None}
    return ManifestRow(
        line=line, file=name, label=parse_label(row.get("label"), where),
        patient_id=text("patient_id"), site=text("site"), source=text("source"),
        age=parse_age(text("age")), sex=text("sex"), view=text("view"), findings=text("findings"),
        nodule_or_mass=parse_flag(text("nodule_or_mass")), split=text("split"),
        extra={k: v for k, v in raw.items() if k not in COLUMNS}, raw=raw,
    )


def read_manifest_rows(path: str | Path) -> list[ManifestRow]:
    """Every row of a manifest CSV; ManifestError for missing columns, bad rows or no rows."""
    path = Path(path)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = set(REQUIRED) - set(reader.fieldnames or [])
        if missing:
            raise ManifestError(f"{path}: manifest lacks column(s) {', '.join(sorted(missing))}")
        rows = [parse_row(row, f"{path}:{line}", line) for line, row in enumerate(reader, start=2)]
    if not rows:
        raise ManifestError(f"{path}: manifest has no films")
    return rows


__all__ = ["COLUMNS", "REQUIRED", "POSITIVE_LABELS", "NEGATIVE_LABELS", "ManifestError", "ManifestRow",
           "parse_label", "label_reader", "label_text", "parse_age", "age_text", "parse_flag", "parse_row",
           "read_manifest_rows"]
