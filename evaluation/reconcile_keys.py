"""Outcomes keyed by accession number: the number a site's RIS and its radiologists use, joined
to the node's studies through the Accession Number (0008,0050) each study arrived with.

``cxr-triage manifest --dataset dicom`` already takes labels keyed by accession number
(``training/adapters/dicom.py``); ``reconcile`` does the same here: the node's job store keeps
each study's accession number, and a result SR carries its study's (PS3.3 C.7.2.1, copied from
the evaluated images). An accession number no study has stays an outcome without a result; one
that several studies share (e.g. a study resent under a new UID) gives its read to each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

#: The CSV column read as the accession number unless ``--accession-column`` names another.
ACCESSION_COLUMN = "accession_number"
#: Outcomes whose accession number no study has keep this prefix before the number (so the
#: reconciliation counts them as outcomes without a result, and no UID can collide).
UNMATCHED_PREFIX = "accession:"


def accessions_from_store(store: Any, since: float | None = None, until: float | None = None,
                          limit: int = 1_000_000) -> dict[str, list[str]]:
    """``{accession number: [study UID, ...]}`` of the triaged studies in the node's job store
    (``StudyQueries.list_studies``; the same window as ``live_from_store``)."""
    pairs = ((s.get("accession_number") or "", s["study_uid"])
             for s in store.list_studies(state="triaged", since=since, until=until, limit=limit))
    return _group(pairs)


def accessions_from_srs(folder: str | Path) -> dict[str, list[str]]:
    """``{accession number: [study UID, ...]}`` from the header of every SR file under ``folder``
    (other files are skipped; only the two attributes are read)."""
    import pydicom

    pairs = []
    for p in sorted(Path(folder).rglob("*")):
        if not p.is_file():
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True,
                                 specific_tags=["Modality", "AccessionNumber", "StudyInstanceUID"])
        except Exception:  # noqa: BLE001 - not a DICOM file: skip it, as read_sr_folder does
            continue
        if getattr(ds, "Modality", "") == "SR":
            pairs.append((str(ds.get("AccessionNumber", "") or ""), str(ds.get("StudyInstanceUID", ""))))
    return _group(pairs)


def _group(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for accession, study in pairs:
        accession = accession.strip()
        if accession and study and study not in out.setdefault(accession, []):
            out[accession].append(study)
    return out


def by_study_uid(outcomes: Mapping[str, Any], studies: Mapping[str, list[str]]) -> dict[str, Any]:
    """Outcomes keyed by accession number re-keyed by Study Instance UID (``studies`` from
    :func:`accessions_from_store` or :func:`accessions_from_srs`); an accession number without
    a study is kept as ``"accession:<number>"`` so it counts as an outcome without a result."""
    out: dict[str, Any] = {}
    for accession, outcome in outcomes.items():
        for uid in studies.get(accession) or [UNMATCHED_PREFIX + accession]:
            out[uid] = outcome
    return out
