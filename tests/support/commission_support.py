"""Helpers for the commissioning/monitoring tests: real films from ../shared/data, scored by the
worker's pipeline, and results recorded in a real node job store the way the worker does it."""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.uid import generate_uid

from cxr_triage.contract.result import FilmResult, aggregate_study


@dataclass
class PoolFilm:
    path: Path
    label: int          # 1 abnormal, 0 normal
    source: str         # nih-cxr14 | nih-extra
    patient_id: str
    findings: str


    age: float


def film_pool(shared_data: Path, children: bool = False) -> list[PoolFilm]:
    """The adult NIH films of both development sets (mixed normal/abnormal population), or
    with ``children`` the films of patients under 16 (outside the intended use)."""
    pool = []
    for name in ("nih-cxr14", "nih-extra"):
        with (shared_data / name / "labels.csv").open() as fh:
            for r in csv.DictReader(fh):
                if (float(r["age"]) < 16) != children:
                    continue
                pool.append(PoolFilm(shared_data / name / r["file"], int(r["label"] == "abnormal"), name,
                                     r["patient_id"], r.get("findings", ""), float(r["age"])))
    return pool


def as_dicom(film: PoolFilm):
    """The film as a DX For Presentation instance carrying the patient's age (the gate reads it)."""
    from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom

    return png_to_dicom(film.path, patient_age=f"{int(film.age):03d}Y")


def gamma_copy(src: Path, dst_dir: Path, gamma: float) -> Path:
    """The same film with a different exposure/processing curve (gamma on [0, 1] intensities)."""
    img = np.asarray(Image.open(src).convert("L"), dtype=np.float32) / 255.0
    out = dst_dir / src.name
    Image.fromarray(np.round(255.0 * img ** gamma).astype(np.uint8)).save(out)
    return out


def utc_noon(day: str) -> float:
    d = dt.date.fromisoformat(day)
    return dt.datetime(d.year, d.month, d.day, 12, tzinfo=dt.timezone.utc).timestamp()


def record_results(store, results: list[FilmResult], day: str) -> list[str]:
    """One study per film, received on ``day`` and triaged, as the node's worker records it
    (``JobStore.add_instance`` -> ``claim_due_study`` -> ``complete_study`` with the
    ``StudyResult`` dict). Returns the Study Instance UIDs in order."""
    from cxr_triage.dicom_node.store.jobs import InstanceRecord

    t0 = utc_noon(day)
    uids = []
    for i, r in enumerate(results):
        study, sop = generate_uid(), generate_uid()
        r.study_instance_uid, r.sop_instance_uid = study, sop
        store.add_instance(InstanceRecord(sop, study, generate_uid(), "1.2.840.10008.5.1.4.1.1.1.1",
                                          "1.2.840.10008.1.2.1", str(r.source), None, "TESTSCU", t0 + i))
        claimed = store.claim_due_study(0.0, now=t0 + i + 1)
        assert claimed and claimed[0] == study
        sr = aggregate_study(study, [r])
        store.complete_study(study, claimed[1], sr.decision.value, sr.score, sr.to_dict(), [], [],
                             now=t0 + i + 2)
        uids.append(study)
    return uids
