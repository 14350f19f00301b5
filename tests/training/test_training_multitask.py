"""The multi-task recipe on small synthetic films (seconds): targets and their masks, teacher
soft targets, pipeline augmentation, a nodule/mass output that is calibrated, exported and
read by the worker's scorer, the heatmap's pointing game, and the report's model checks."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_triage.paths import repo_root
from cxr_triage.training.augment import PipelineAugment
from cxr_triage.training.manifest import Entry
from cxr_triage.training.targets import (
    NODULE,
    TASKS,
    nodule_known,
    nodule_normals,
    nodule_truth,
    nodule_vs_normal,
    targets,
)

SIZE = 64


def test_targets_masks_and_teacher_mix() -> None:
    nih_nodule = Entry("a.png", 1, findings="Nodule|Effusion", nodule_or_mass=1,
                       extra={"teacher_Nodule": "0.6", "teacher_Mass": "0.5", "teacher_Effusion": "0.2"})
    nih_normal = Entry("b.png", 0, findings="No Finding")
    rsna_opacity = Entry("c.jpg", 1, findings="", extra={"rsna_class": "Lung Opacity"})
    site_normal = Entry("d.png", 0)
    y, known = targets([nih_nodule, nih_normal, rsna_opacity, site_normal], multitask=True, distill=0.0)
    assert y.shape == known.shape == (4, len(TASKS))
    assert known[:, 0].tolist() == [1, 1, 1, 1] and y[:, 0].tolist() == [1, 0, 1, 0]
    # nodule/mass status: known from NIH findings or a normal label, unknown for an RSNA opacity film
    assert known[:, NODULE].tolist() == [1, 1, 0, 1] and y[:, NODULE].tolist() == [1, 0, 0, 0]
    effusion = 2 + list(TASKS[2:]).index("finding_Effusion")
    assert y[0, effusion] == 1 and known[2, effusion] == 0
    soft, _ = targets([nih_nodule], multitask=True, distill=0.5)
    assert soft[0, NODULE] == pytest.approx(0.5 * 1 + 0.5 * (1 - 0.4 * 0.5))
    assert soft[0, effusion] == pytest.approx(0.5 * 1 + 0.5 * 0.2)
    only, k1 = targets([nih_nodule], multitask=False)
    assert only.shape == k1.shape == (1, 1)
    assert nodule_known([nih_nodule, rsna_opacity]).tolist() == [True, False]
    assert nodule_truth([nih_nodule, nih_normal]).tolist() == [1, 0]
    # the lung-cancer question's negatives, one rule for the report, the flag and the float16 check:
    # a normal film, status known, not Nodule/Mass (a conflicting or self-contradicting row is neither)
    conflict = Entry("e.jpg", 0, nodule_or_mass=1, extra={"label_conflict": "rsna Normal vs NIH Nodule"})
    odd = Entry("f.png", 0, findings="Nodule")
    films = [nih_nodule, nih_normal, rsna_opacity, site_normal, conflict, odd]
    assert nodule_normals(films).tolist() == [False, True, False, True, False, False]
    assert nodule_vs_normal(films).tolist() == [True, True, False, True, False, True]


def test_pipeline_augment_is_seeded_and_varies_the_pipeline() -> None:
    film = (np.random.default_rng(0).random((256, 256)) * 255).astype(np.uint8)
    aug = PipelineAugment(1.0)
    a = aug(film, np.random.default_rng([1, 2, 3]))
    b = aug(film, np.random.default_rng([1, 2, 3]))
    assert np.array_equal(a, b) and a.dtype == np.float32 and 0.0 <= a.min() and a.max() <= 1.0
    outs = [aug(film, np.random.default_rng([1, 2, k])) for k in range(20)]
    assert len({o.shape for o in outs}) > 3  # resampled to different sides, cropped, bordered
    same = PipelineAugment(0.0)(film, np.random.default_rng(0))
    assert np.allclose(same, film / 255.0, atol=1e-6)


def _film(rng: np.random.Generator, blob: tuple[int, int] | None) -> np.ndarray:
    img = rng.normal(110, 20, (SIZE, SIZE)).clip(0, 255)
    if blob is not None:
        yy, xx = np.mgrid[:SIZE, :SIZE]
        img += 100 * np.exp(-((yy - blob[0]) ** 2 + (xx - blob[1]) ** 2) / 30.0)
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def multitask_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sources; abnormal films carry a blob (a box around it), half of them a 'Nodule';
    each normal of source A has a twin in source B (the same film, JPEG re-encoded)."""
    root = tmp_path_factory.mktemp("mt")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    rows, boxes = [], []
    for p in range(72):
        abnormal = p % 2 == 0
        blob = (int(rng.integers(20, 44)), int(rng.integers(14, 50))) if abnormal else None
        name = f"img/p{p:03d}.png"
        film = _film(rng, blob)
        Image.fromarray(film).save(root / name)
        findings = ("Nodule" if p % 4 == 0 else "Effusion") if abnormal else "No Finding"
        twin = ""
        if not abnormal and p % 3 == 1:
            twin = f"img/p{p:03d}_twin.jpg"
            Image.fromarray(film).save(root / twin, quality=70)
            rows.append([twin, "normal", f"p{p}", "B", "No Finding", "0", name])
        rows.append([name, "abnormal" if abnormal else "normal", f"p{p}", "A" if p % 3 else "B", findings,
                     str(int(findings == "Nodule")), twin])
        if blob is not None:
            boxes.append([name, blob[1] - 6, blob[0] - 6, 12, 12])
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "patient_id", "source", "findings", "nodule_or_mass", "twin"])
        w.writerows(rows)
    with (root / "boxes.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "x", "y", "width", "height"])
        w.writerows(boxes)
    return root


def test_multitask_run_exports_a_nodule_output_the_worker_reads(multitask_data: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    from cxr_triage.contract.model_file import NODULE_OUTPUT
    from cxr_triage.contract.preprocessing import preprocess
    from cxr_triage.inference.scorer import Scorer
    from cxr_triage.training.dataset import read_pixels
    from cxr_triage.training.export import export_checkpoint
    from cxr_triage.training.report import test_report
    from cxr_triage.training.train import TrainConfig, train

    run = tmp_path / "run"
    cfg = TrainConfig(manifest=str(multitask_data / "manifest.csv"), out=str(run), architecture="tiny",
                      pretrained=False, image_size=SIZE, harmonise_size=SIZE, epochs=3, batch_size=8, lr=0.01,
                      patience=10, threads=1, progress=False, multitask=True, pipeline_augment=1.0,
                      balance="source_label", select_metric="source_mean_auroc_nodule",
                      boxes_csv=str(multitask_data / "boxes.csv"), test_report=False)
    summary = train(cfg)
    nodule = summary["validation_metrics"]["nodule"]
    assert nodule["positive"] >= 1 and set(nodule["operating_points"]) == {
        "sens_0.8", "sens_0.9", "sens_0.95", "normals_0.1", "normals_0.15", "normals_0.2"}
    heat = summary["validation_metrics"]["heatmap"]
    assert heat["validation"]["films"] >= 1 and isinstance(heat["validated"], bool)
    assert len(heat["guess_point"]) == 2

    onnx_path = tmp_path / "m.onnx"
    check = export_checkpoint(run / "model.pt", onnx_path, check_manifest=run / "split.csv")
    assert check["nodule_max_abs_diff"] <= 1e-4
    assert NODULE_OUTPUT in {o.name for o in ort.InferenceSession(str(onnx_path)).get_outputs()}
    scorer = Scorer(onnx_path, threads=1)
    assert scorer.metadata.nodule_threshold() is not None
    assert scorer.metadata.heatmap_validated == heat["validated"]
    film = preprocess(read_pixels(multitask_data / "img" / "p000.png"), scorer.metadata.preprocessing)
    out = scorer.score(film[None])
    assert out.nodule_scores is not None and 0.0 <= float(out.nodule_scores[0]) <= 1.0

    rep = test_report(onnx_path, run / "split.csv", None, None, "all", n_boot=50,
                      boxes=multitask_data / "boxes.csv")
    assert rep["nodule"]["headline"]["nodule_or_mass_films"] == 18
    checks = rep["checks"]
    assert checks["twins"]["pairs"] == 12 and 0.0 <= checks["twins"]["decision_agreement"] <= 1.0
    assert set(checks["source_probe"]["sources"]) == {"A", "B"}
    assert checks["pointing_game"]["films"] == 36


def test_ensemble_of_two_seeds_exports_like_one_run(multitask_data: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    from cxr_triage.contract.model_file import NODULE_OUTPUT
    from cxr_triage.training.ensemble import ensemble_runs
    from cxr_triage.training.export import export_checkpoint
    from cxr_triage.training.train import TrainConfig, train

    runs = []
    manifest = multitask_data / "manifest.csv"
    for seed in (0, 1):
        run = tmp_path / f"s{seed}"
        train(TrainConfig(manifest=str(manifest), out=str(run), architecture="tiny", pretrained=False,
                          image_size=SIZE, harmonise_size=SIZE, epochs=2, batch_size=8, lr=0.01, threads=1,
                          progress=False, seed=seed, pipeline_augment=0.5, ema=0.9, test_report=False,
                          boxes_csv=str(multitask_data / "boxes.csv")))
        runs.append(run)
        manifest = run / "split.csv"  # the second seed keeps the first run's split
    metrics = ensemble_runs(runs, tmp_path / "ens")
    assert 0.0 <= metrics["auroc"] <= 1.0 and "nodule" in metrics and "heatmap" in metrics
    onnx_path = tmp_path / "ens.onnx"
    export_checkpoint(tmp_path / "ens" / "model.pt", onnx_path, check_manifest=runs[0] / "split.csv",
                      data_root=runs[0])
    assert NODULE_OUTPUT in {o.name for o in ort.InferenceSession(str(onnx_path)).get_outputs()}


def test_a_one_class_training_source_beside_others_is_warned_about() -> None:
    from cxr_triage.training.manifest import read_manifest
    from cxr_triage.training.train_data import one_class_source_warnings

    site = [Entry("a.png", 1, source="site"), Entry("b.png", 0, source="site")]
    assert one_class_source_warnings(site) == []                                  # one source: nothing
    assert one_class_source_warnings(site + [Entry("c.png", 1, source="extra")])[0].startswith(
        "warning: training source extra holds only abnormal films")
    # the committed split's training rows: the rsna-normals (224 px, normals only) are the one
    rows = [e for e in read_manifest(repo_root() / "model" / "default_split.csv") if e.split == "train"]
    warnings = one_class_source_warnings(rows)
    assert len(warnings) == 1 and "rsna-normals holds only normal films" in warnings[0]
