"""Synthetic nodules/masses, the screen-film look, the nodule/mass flag chosen by the share of
normals, and float16 weight storage (issue 22)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from cxr_triage.config import load_config
from cxr_triage.contract.model_file import METADATA_KEY, ModelMetadata
from cxr_triage.contract.operating_points import flag_rate_of, flag_rate_point_name, threshold_for_flag_rate
from cxr_triage.inference.pipeline import Triager
from cxr_triage.training.adapters import FIELD_MM, LABEL_CONFLICT, NIH_FINDINGS
from cxr_triage.training.augment import PipelineAugment
from cxr_triage.training.export_fp16 import check_half, halve_weights
from cxr_triage.training.film_look import screen_film
from cxr_triage.training.lesions import MASS_MM, NODULE_MM, insert_lesion, lung_mask
from cxr_triage.training.manifest import Entry
from cxr_triage.training.synthetic import LesionDraws
from cxr_triage.training.targets import ABNORMAL, NODULE
from cxr_triage.training.val_calibration import nodule_calibration


def phantom(size: int = 256) -> np.ndarray:
    """A chest-like uint8 film: bright body and mediastinum, two dark lung ellipses."""
    y, x = np.mgrid[0:size, 0:size] / size
    film = np.full((size, size), 200.0)
    for cx in (0.3, 0.7):
        film[((x - cx) / 0.16) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1] = 60.0
    return film.astype(np.uint8)


def test_lesion_lies_in_the_lung_field_with_its_true_size() -> None:
    film = phantom()
    mask = lung_mask(film)
    assert mask.any() and not mask[:, 120:136].any()  # the mediastinal band is left out
    sizes = {"nodule": [], "mass": []}
    for seed in range(40):
        out, les = insert_lesion(film, np.random.default_rng(seed), field_mm=400.0, mask=mask)
        assert les is not None and out.dtype == np.uint8 and out.shape == film.shape
        assert mask[int(les.row), int(les.col)]
        assert les.radius_px == pytest.approx(les.diameter_mm / 2 / (400.0 / 256))
        diff = out.astype(int) - film.astype(int)
        assert diff.min() >= 0 and diff[int(les.row), int(les.col)] > 0  # attenuation: brighter
        rows, cols = np.nonzero(diff)
        assert np.hypot(rows - les.row, cols - les.col).max() <= 2.7 * les.radius_px + 6
        sizes[les.kind].append(les.diameter_mm)
    assert NODULE_MM[0] <= min(sizes["nodule"]) and max(sizes["nodule"]) <= NODULE_MM[1]
    assert MASS_MM[0] <= min(sizes["mass"]) and max(sizes["mass"]) <= MASS_MM[1]
    # contrast grows with the lesion: masses add more than small nodules on the same film
    assert np.median(sizes["mass"]) > np.median(sizes["nodule"])


def test_lesion_draws_change_only_eligible_normal_films_and_their_targets() -> None:
    k = 2 + len(NIH_FINDINGS)
    entries = [Entry(file="n", label=0, extra={FIELD_MM: "380"}), Entry(file="a", label=1),
               Entry(file="c", label=0, extra={LABEL_CONFLICT: "nodule_read_normal"})]
    draws = LesionDraws.of(entries, p=1.0)
    assert list(draws.eligible) == [True, False, False] and draws.field_mm[0] == 380.0
    film, y, known = phantom(), np.zeros(k, np.float32), np.zeros(k, np.float32)
    out, y2, k2 = draws(0, film, y, known, (0, 1))
    assert (out != film).any() and y2[ABNORMAL] == 1 and y2[NODULE] == 1 and k2[ABNORMAL] == 1 and k2[NODULE] == 1
    finding = {2 + NIH_FINDINGS.index("Nodule"), 2 + NIH_FINDINGS.index("Mass")}
    assert {int(i) for i in np.flatnonzero(y2)} - {ABNORMAL, NODULE} <= finding
    assert y.sum() == 0  # the dataset's own targets are not changed
    again, _, _ = draws(0, film, y, known, (0, 1))
    assert (again == out).all()  # the same draw for the same (seed, epoch)
    for i in (1, 2):
        same, ys, _ = draws(i, film, y, known, (0, 1))
        assert same is film and ys is y
    assert draws(0, film, y, known, (0, 1))[0] is not film
    assert LesionDraws.of(entries, p=0.0)(0, film, y, known, (0, 1))[0] is film


def test_screen_film_look_is_deterministic_quantised_and_keeps_the_size() -> None:
    film = phantom(300)
    a = screen_film(film, np.random.default_rng(3))
    b = screen_film(film, np.random.default_rng(3))
    assert a.shape == film.shape and a.dtype == np.float32 and 0.0 <= a.min() and a.max() <= 1.0
    assert (a == b).all() and len(np.unique(a)) <= 256
    # lungs stay darker than the body
    assert a[150, 90] < a[20, 150]
    # the chain without the look draws exactly what it drew before the look existed
    chain, off = PipelineAugment(0.5), PipelineAugment(0.5, film_look=0.0)
    assert (chain(film, np.random.default_rng(1)) == off(film, np.random.default_rng(1))).all()
    assert PipelineAugment(0.0, film_look=1.0)(film, np.random.default_rng(1)).shape == film.shape


def test_threshold_for_a_share_of_normals() -> None:
    assert flag_rate_point_name(0.15) == "normals_0.15" and flag_rate_of("normals_0.15") == 0.15
    assert flag_rate_of("sens_0.9") is None
    normals = np.linspace(0.0, 0.99, 100)
    t = threshold_for_flag_rate(normals, 0.15)
    assert int((normals >= t).sum()) == 15
    assert int((normals >= threshold_for_flag_rate(normals, 0.0)).sum()) == 0
    assert int((normals >= threshold_for_flag_rate(normals, 1.0)).sum()) == 100
    with pytest.raises(ValueError):
        threshold_for_flag_rate([], 0.15)


def _val(n_pos: int, n_norm: int) -> list[Entry]:
    return ([Entry(file=f"p{i}", label=1, findings="Nodule", nodule_or_mass=1) for i in range(n_pos)]
            + [Entry(file=f"n{i}", label=0, findings="No Finding") for i in range(n_norm)])


def test_nodule_flag_point_by_normals_and_whether_it_is_shown() -> None:
    val = _val(20, 80)
    rng = np.random.default_rng(0)
    separable = np.r_[rng.normal(3, 0.5, 20), rng.normal(0, 0.5, 80)]
    cal = nodule_calibration(val, separable, np.ones(100, bool))
    assert cal["nodule_default_operating_point"] == "normals_0.15" and cal["nodule_flag_shown"] is True
    point = cal["nodule_metrics"]["flag_rate_points"]["normals_0.15"]
    assert point["normals_flagged"] <= 0.15 and point["sensitivity"] >= 0.95
    assert cal["nodule_thresholds"]["normals_0.15"] == point["threshold"]
    chance = rng.normal(0, 1, 100)
    weak = nodule_calibration(val, chance, np.ones(100, bool))
    assert weak["nodule_flag_shown"] is (weak["nodule_metrics"]["flag_rate_points"]["normals_0.15"]["sensitivity"]
                                         >= 0.6)
    assert weak["nodule_flag_shown"] is False


def test_float16_weights_halve_the_file_and_pass_the_check(tiny_nodule_model: Path, tmp_path: Path) -> None:
    half = halve_weights(tiny_nodule_model, tmp_path / "half.onnx", min_elements=1)
    graph = onnx.load(str(half)).graph
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    assert graph.node[0].op_type == "Cast"
    meta = {p.key: p.value for p in onnx.load(str(half)).metadata_props}[METADATA_KEY]
    assert meta == {p.key: p.value for p in onnx.load(str(tiny_nodule_model)).metadata_props}[METADATA_KEY]
    x = np.random.default_rng(0).normal(0, 0.3, size=(40, 1, 224, 224)).astype(np.float32)
    labels = (x.reshape(40, -1).mean(1) > 0).astype(int)
    res = check_half(tiny_nodule_model, half, x, labels)
    assert res["decision_agreement"] == 1.0 and res["nodule_flag_agreement"] == 1.0 and res["auroc_change"] == 0.0


def test_worker_shows_no_nodule_flag_when_the_model_says_so(tiny_nodule_model: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_nodule_model))
    props = {p.key: p.value for p in model.metadata_props}
    data = json.loads(props[METADATA_KEY])
    data["nodule_flag_shown"] = False
    onnx.helper.set_model_props(model, {**props, METADATA_KEY: json.dumps(data)})
    path = tmp_path / "no_flag.onnx"
    onnx.save(model, str(path))
    assert ModelMetadata.from_json(json.dumps(data)).nodule_flag_shown is False
    t = Triager(load_config(None, environ={}).replace(inference={"model_path": str(path), "threads": 1}))
    film = tmp_path / "film.png"
    Image.fromarray(phantom(512)).save(film)
    r = t.triage_file(film)
    assert r.nodule_score is not None and r.nodule_flag is None

