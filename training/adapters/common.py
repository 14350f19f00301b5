"""What every dataset adapter shares: the errors, the record of what an import left out,
the film suffixes and views, and the CSV/file helpers."""

from __future__ import annotations

import csv
import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

#: film files a generic folder may hold (DICOM files may have any suffix or none)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom", "")
#: views the intended use covers; laterals are left out (the worker's gate refuses them)
FRONTAL_VIEWS = ("PA", "AP", "")


class DatasetError(ValueError):
    """A dataset folder that cannot be imported as asked (one line, no traceback)."""


@dataclass
class ImportProblems:
    """What an import left out, by kind: ``{kind: [example, ...]}`` plus a count per kind.

    Nothing is skipped silently: the ``manifest`` command prints :meth:`lines` and writes
    :meth:`to_dict` into its JSON summary. Examples are file names, CSV line numbers and the
    labels CSV's own keys (the accession number a user looks up), never patient identifiers
    read from headers."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, example: str, keep: int = 5) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < keep:
            ex.append(example)

    def lines(self) -> list[str]:
        """One line per kind: ``<count> <kind>: first, second, ... (and N more)``."""
        out = []
        for kind, n in self.counts.items():
            ex = self.examples.get(kind, [])
            more = f" (and {n - len(ex)} more)" if n > len(ex) else ""
            out.append(f"{n} {kind}: {', '.join(ex)}{more}")
        return out

    def to_dict(self) -> dict[str, dict[str, object]]:
        return {k: {"count": n, "examples": self.examples.get(k, [])} for k, n in self.counts.items()}

    def __bool__(self) -> bool:
        return bool(self.counts)


def open_csv(path: Path) -> Iterator[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as fh:  # type: ignore[operator]
        yield from csv.DictReader(fh)


def find_file(root: Path, *names: str) -> Path:
    for name in names:
        hits = sorted(root.glob(name))
        if hits:
            return hits[0]
    raise DatasetError(f"{root}: none of {', '.join(names)} found: is this the dataset's folder?")


def nodule_in(findings: str) -> int:
    return int(bool(re.search(r"\b(nodule|mass|lesion)\b", findings, re.I)))
