"""Persist each film's heatmap beside the queue, so the worklist can show it later.

``FilmResult.heatmap`` is deliberately not part of the JSON result; the worker calls
:func:`save_study_heatmaps` after triage and the web page reads them back with
:func:`load_heatmap`. Files: ``<state_dir>/heatmaps/<study uid>/<sop uid>.npy`` (float16,
a few hundred bytes each), written atomically.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from cxr_triage.contract.result import StudyResult

_UID = re.compile(r"^[0-9][0-9.]{0,63}$")


def _checked(uid: str) -> str:
    """UIDs become file names: refuse anything that is not a DICOM UID."""
    if not isinstance(uid, str) or not _UID.match(uid) or ".." in uid:
        raise ValueError(f"not a DICOM UID: {uid!r}")
    return uid


def heatmap_path(state_dir: str | Path, study_uid: str, sop_uid: str) -> Path:
    return Path(state_dir) / "heatmaps" / _checked(study_uid) / f"{_checked(sop_uid)}.npy"


def save_heatmap(state_dir: str | Path, study_uid: str, sop_uid: str, heatmap: np.ndarray) -> Path:
    """Write one (h, w) heatmap in [0, 1]; an existing file is replaced atomically."""
    path = heatmap_path(state_dir, study_uid, sop_uid)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".npy.part")
    with open(tmp, "wb") as fh:
        np.save(fh, np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0).astype(np.float16))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def save_study_heatmaps(state_dir: str | Path, study: StudyResult) -> int:
    """Save the heatmap of every film that has one (and DICOM UIDs); returns how many."""
    n = 0
    for film in study.films:
        if film.heatmap is None or not film.sop_instance_uid:
            continue
        try:
            save_heatmap(state_dir, study.study_instance_uid, film.sop_instance_uid, film.heatmap)
        except ValueError:
            continue
        n += 1
    return n


def load_heatmap(state_dir: str | Path, study_uid: str, sop_uid: str) -> np.ndarray | None:
    """The stored heatmap as float32, or None when there is none (or the UIDs are not UIDs)."""
    try:
        path = heatmap_path(state_dir, study_uid, sop_uid)
    except ValueError:
        return None
    if not path.is_file():
        return None
    heatmap: np.ndarray = np.load(path, allow_pickle=False).astype(np.float32)
    return heatmap
