"""Synthetic lesions as designed (issue 22 diagnosis): the inserted peak is the designed one,
no lesion lands in the background outside the body, and the rsna-pneumonia teacher rows are
read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr_triage.training import adapters
from cxr_triage.training.adapters import TEACHER_PREFIX
from cxr_triage.training.lesions import MIN_PEAK, insert_lesion, lung_fields, lung_mask


def chest(size: int = 256, background: float = 0.0) -> np.ndarray:
    """A float chest-like film in [0, 1]: body 0.8, two graded lungs 0.2-0.4; with
    ``background`` > 0, that share of each side is dark air (0.02) reaching into the central
    region the lung mask looks at, next to the lungs."""
    y, x = np.mgrid[0:size, 0:size] / size
    film = np.full((size, size), 0.8)
    for cx in (0.33, 0.67):
        lung = ((x - cx) / 0.11) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1
        film[lung] = 0.2 + 0.2 * y[lung]
    film[(x < background) | (x > 1 - background)] = 0.02
    return film.astype(np.float32)


def test_inserted_peak_is_the_designed_peak() -> None:
    film = chest()
    mask, room = lung_fields(film)
    ratios, kinds = [], set()
    for seed in range(80):
        out, les = insert_lesion(film, np.random.default_rng(seed), 400.0, mask, room)
        assert les is not None and les.peak >= MIN_PEAK
        ratios.append(float((out - film).max()) / les.peak)
        kinds.add(les.kind)
    # the first version added peak x (1 - grey): a median 0.7 of the design on this film
    assert abs(np.median(ratios) - 1.0) <= 0.1 and kinds == {"nodule", "mass"}


def test_no_lesion_in_the_background_outside_the_body() -> None:
    film = chest(background=0.2)  # the body's edge 5 px from the lungs, air inside the central region
    air = film < 0.05
    plain_mask = lung_mask(chest())
    mask, room = lung_fields(film)
    assert not (mask & air).any() and (mask & plain_mask).sum() > 0.5 * plain_mask.sum()
    assert np.isinf(lung_fields(chest())[1]).all()  # no background: no limit
    for seed in range(60):
        out, les = insert_lesion(film, np.random.default_rng(seed), 400.0, mask, room)
        assert les is not None and mask[int(les.row), int(les.col)]
        y, x = np.mgrid[0:film.shape[0], 0:film.shape[1]]
        disc = (y - les.row) ** 2 + (x - les.col) ** 2 <= les.radius_px ** 2
        assert not (disc & air).any()
    # without a mask given, insert_lesion finds both itself
    _, les = insert_lesion(film, np.random.default_rng(0), 400.0)
    assert les is not None and not air[int(les.row), int(les.col)]


def test_rsna_pneumonia_teacher_rows_are_read(shared_data: Path) -> None:
    teacher = shared_data / "rsna-pneumonia" / "teacher_chexnet_repro.csv"
    if not teacher.exists():
        pytest.skip("no rsna-pneumonia/teacher_chexnet_repro.csv in the shared data")
    es = [e for e in adapters.shared_data(shared_data) if e.source == "rsna-pneumonia"]
    with_teacher = [e for e in es if e.extra.get(TEACHER_PREFIX + "Nodule")]
    files = {line.split(",", 1)[0] for line in teacher.read_text().splitlines()[1:]}
    assert with_teacher and len(with_teacher) == len({e.file for e in es} & {f"rsna-pneumonia/{f}" for f in files})
    for e in with_teacher:
        assert len([k for k in e.extra if k.startswith(TEACHER_PREFIX)]) == 14
