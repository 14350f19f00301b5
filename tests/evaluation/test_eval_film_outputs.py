"""Model outputs per film through the node's film pipeline (evaluation.film_outputs): the gate
refuses the same films as in ``evaluate`` / ``predict``, and the scores are the Triager's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr_triage.config import load_config
from cxr_triage.contract.result import Decision
from cxr_triage.evaluation.film_outputs import gated_model_outputs
from cxr_triage.inference.pipeline import Triager
from cxr_triage.paths import bundled_model_path


@pytest.fixture(scope="module")
def films(shared_data: Path, sample_dicoms: dict[str, Path]) -> list[Path]:
    """An adult NIH PNG, a 224 px rsna-normals PNG, a dog's DICOM, an adult chest CR."""
    return [sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))[0],
            sorted((shared_data / "rsna-normals").rglob("*.png"))[0],
            sample_dicoms["highdicom_dx_canine_thorax_mono1"],
            sample_dicoms["siim_cr_chest_pa"]]


def test_the_gate_decides_which_films_are_scored(films, tiny_model):
    cfg = load_config(None, environ={})
    got = gated_model_outputs(tiny_model, films, cfg, threads=1, batch=1)
    assert got.assessed == [0, 3]
    assert [(i, reason) for i, reason, _ in got.refused] == [(1, "too_small"), (2, "non_human")]
    assert all(detail for _, _, detail in got.refused)
    node = Triager(cfg, model_path=tiny_model, threads=1).triage_paths(films)
    assert [r.decision is Decision.NOT_ASSESSABLE for r in node] == [False, True, True, False]
    scores = np.asarray(got.outputs["score"]).reshape(-1)
    np.testing.assert_allclose(scores, [node[0].score, node[3].score], rtol=0, atol=1e-6)
    assert got.outputs["heatmap"].shape[0] == 2  # every output the model has, per scored film


def test_no_film_assessable_gives_empty_outputs(films, tiny_model):
    got = gated_model_outputs(tiny_model, films[1:3], load_config(None, environ={}), threads=1)
    assert got.assessed == [] and len(got.refused) == 2
    assert all(v.size == 0 for v in got.outputs.values())


def test_a_model_with_a_class_activation_map_also_gives_features(films):
    """The bundled model: the pooled features of the source probe come with the scores, and
    the scores are still the node's."""
    model = bundled_model_path()
    cfg = load_config(None, environ={})
    got = gated_model_outputs(model, films, cfg, threads=1)
    assert got.assessed == [0, 3]
    assert got.outputs["features"].ndim == 2 and got.outputs["features"].shape[0] == 2
    node = Triager(cfg, model_path=model, threads=1).triage_paths([films[0], films[3]])
    np.testing.assert_allclose(got.outputs["score"].reshape(-1), [r.score for r in node], rtol=0, atol=1e-5)
