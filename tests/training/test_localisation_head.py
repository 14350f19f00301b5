"""The localisation head trained on boxes and its pointing game (training/localisation_head.py,
issue 22): the head learns where box cells are, the variant is chosen without validation, the
command's figures are the pointing game's, and refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_triage.evaluation import model_checks as mc
from cxr_triage.training import localisation_head as lh
from cxr_triage.training.manifest import Entry, write_manifest
from cxr_triage.training.nodule_head import model_inputs


def _maps_with_boxes(n: int, seed: int) -> tuple[np.ndarray, list[list[mc.Box]], list[float]]:
    """(N, 4, 7, 7) maps whose channel 0 marks a 2 x 2-cell box at a random place (side 70 px:
    a cell is 10 px), the other channels noise."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(0, 1, (n, 4, 7, 7)).astype(np.float32)
    boxes = []
    for i in range(n):
        r, c = rng.integers(0, 6, 2)
        maps[i, 0, r:r + 2, c:c + 2] += 4.0
        boxes.append([(c * 10.0 + 1, r * 10.0 + 1, 18.0, 18.0)])
    return maps, boxes, [70.0] * n


def test_cell_targets_are_the_cells_whose_centre_lies_in_a_box() -> None:
    t = lh.cell_targets([[(1.0, 1.0, 18.0, 18.0)], [(30.0, 50.0, 40.0, 10.0)]], [70.0, 70.0], 7)
    assert t.shape == (2, 7, 7)
    assert set(zip(*np.nonzero(t[0]))) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert set(zip(*np.nonzero(t[1]))) == {(5, 3), (5, 4), (5, 5), (5, 6)}


def test_the_head_points_at_the_marked_cells_and_beats_the_fixed_guess() -> None:
    maps, boxes, sides = _maps_with_boxes(60, seed=0)
    targets = lh.cell_targets(boxes, sides, 7)
    clf = lh.fit_head(maps, targets, c=1.0)
    held, held_boxes, held_sides = _maps_with_boxes(30, seed=1)
    hits = mc.pointing_hits(lh.head_maps(clf, held), held_boxes, held_sides)
    guess = mc.best_fixed_point(mc.box_prior(boxes, sides, 7))
    assert hits.mean() >= 0.9
    assert hits.sum() > mc.fixed_point_hits(guess, held_boxes, held_sides).sum()
    # the log prior is added cell by cell
    prior = mc.box_prior(boxes, sides, 7)
    np.testing.assert_allclose(lh.head_maps(clf, held, prior) - lh.head_maps(clf, held),
                               np.broadcast_to(np.log(np.clip(prior, lh.PRIOR_FLOOR, None)), (30, 7, 7)))


def test_the_variant_is_chosen_by_the_training_films_cross_validation() -> None:
    maps, boxes, sides = _maps_with_boxes(50, seed=2)
    targets = lh.cell_targets(boxes, sides, 7)
    choice = lh.choose_variant(maps, targets, boxes, sides, [f"p{i // 2}" for i in range(50)], grid=(1e-3, 1.0))
    assert choice["films"] == 50 and set(choice["by_variant"]) == {"C=0.001", "C=0.001 + prior", "C=1", "C=1 + prior"}
    assert choice["hits"] == max(v["hits"] for v in choice["by_variant"].values())
    assert choice["hits"] > choice["guess_hits"]


def _films_with_boxes(root: Path, n_train: int = 12, n_val: int = 6) -> tuple[Path, Path]:
    """nih-cxr14 films (64 px) with a bright disc, its box in ``boxes.csv``; a manifest."""
    rng = np.random.default_rng(0)
    entries, rows = [], []
    for split, n in (("train", n_train), ("val", n_val), ("test", 4)):
        for i in range(n):
            img = rng.normal(90, 20, (64, 64))
            cy, cx = rng.integers(12, 52, 2)
            yy, xx = np.mgrid[:64, :64]
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < 49] += 120
            name = f"{split}{i}.png"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name)
            entries.append(Entry(file=name, label=1, source="nih-cxr14", split=split, findings="Mass",
                                 patient_id=f"{split}-{i}"))
            rows.append({"file": name, "x": cx - 8, "y": cy - 8, "width": 16, "height": 16})
    write_manifest(entries, root / "labels.csv")
    with (root / "boxes.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "x", "y", "width", "height"])
        w.writeheader()
        w.writerows(rows)
    return root / "labels.csv", root / "boxes.csv"


def test_the_command_reports_the_pointing_game_of_the_chosen_head(ensemble_file: Path, tmp_path: Path) -> None:
    manifest, boxes = _films_with_boxes(tmp_path)
    out = tmp_path / "new" / "loc.json"   # its folder is made
    rc = lh.main(["--model", str(ensemble_file), "--manifest", str(manifest), "--data-root", str(tmp_path),
                  "--boxes", str(boxes), "--test", "--threads", "1", "--out", str(out)])
    assert rc == 0
    got = json.loads(out.read_text())
    assert got["films_with_boxes"] == {"train": 12, "val": 6, "test": 4}
    maps, heat = lh.feature_maps(lh.map_session(ensemble_file, 1), model_inputs(ensemble_file, [tmp_path / "val0.png"]))
    assert maps.ndim == 4 and got["grid"] == maps.shape[-1] == maps.shape[-2]
    assert heat.shape == (1, *maps.shape[-2:])  # the file's own heatmap, on the same grid
    assert maps.shape[1] % 2 == 0  # the two members' channels side by side
    for split, n in (("val", 6), ("test", 4)):
        head, own = got[split]["trained_head"], got[split]["model_heatmap"]
        assert head["films"] == n and 0 <= head["heatmap_hit_rate"]["k"] <= n
        # the file's own heatmap on the same films, against the same guess
        assert own["films"] == n and own["fixed_guess_hit_rate"] == head["fixed_guess_hit_rate"]
    assert got["shown"] == got["val"]["trained_head"]["beats_guess"]
    assert got["chosen_by_training_cv"]["films"] == 12


def test_too_few_films_with_boxes_and_a_model_without_a_map_are_refused(
        ensemble_file: Path, tiny_nodule_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest, boxes = _films_with_boxes(tmp_path, n_train=4)
    rc = lh.main(["--model", str(ensemble_file), "--manifest", str(manifest), "--data-root", str(tmp_path),
                  "--boxes", str(boxes), "--threads", "1"])
    assert rc == 2
    assert "films with boxes: 4 training (at least 10 needed), 6 validation" in capsys.readouterr().err
    with pytest.raises(lh.LocalisationError, match="no class-activation Einsum"):
        lh.map_session(tiny_nodule_model, 1)
    with pytest.raises(lh.LocalisationError, match="not an ONNX model"):
        lh.map_session(manifest, 1)
    common = ["--model", str(ensemble_file), "--manifest", str(manifest), "--threads", "1"]
    assert lh.main([*common, "--data-root", str(tmp_path), "--boxes", str(manifest)]) == 2
    assert "not a boxes CSV (file,x,y,width,height)" in capsys.readouterr().err
    assert lh.main([*common, "--data-root", str(tmp_path / "elsewhere"), "--boxes", str(boxes)]) == 2
    assert "0 training (at least 10 needed), 0 validation: no film of the manifest" in capsys.readouterr().err
