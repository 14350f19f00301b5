"""`cxr-triage evaluate --model`: the node's own pipeline on real PNG films from ../shared/data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr_triage.cli import main
from cxr_triage.evaluation import sources
from cxr_triage.inference.pipeline import Triager


@pytest.fixture(scope="module")
def small_manifest(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 normal + 10 abnormal NIH films (4 with nodule/mass) with the dataset's own columns."""
    rows = list(csv.DictReader((shared_data / "nih-cxr14" / "labels.csv").open()))
    pick = ([r for r in rows if r["label"] == "normal"][:8]
            + [r for r in rows if r["label"] == "abnormal" and r["nodule_or_mass"] == "1"][:4]
            + [r for r in rows if r["label"] == "abnormal" and r["nodule_or_mass"] == "0"][:6])
    path = tmp_path_factory.mktemp("eval") / "manifest.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(pick)
    return path


def test_model_path_matches_the_pipeline(small_manifest: Path, shared_data: Path, tiny_model: Path,
                                         tmp_path: Path) -> None:
    root = shared_data / "nih-cxr14"
    out = tmp_path / "out"
    rc = main(["evaluate", str(small_manifest), "--data-root", str(root), "--model", str(tiny_model),
               "--n-boot", "200", "--out", str(out)])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    films = sources.read_manifest(small_manifest, root)
    direct = Triager(model_path=tiny_model).triage_paths([f.path for f in films])
    scores = np.array([r.score for r in direct])
    labels = np.array([f.label for f in films])
    assert [f["score"] for f in rep["films"]] == pytest.approx(scores.tolist())
    assert [f["decision"] for f in rep["films"]] == [r.decision.value for r in direct]
    assert rep["auroc"]["delong"]["value"] == pytest.approx(roc_auc_score(labels, scores))
    assert rep["inputs"]["model"]["name"] == "tiny-test-model" and len(rep["inputs"]["model"]["sha256"]) == 64
    prov = rep["thresholds"]["provenance"]
    assert prov["source"].startswith("model metadata of tiny-test-model") and prov["checked"] is False
    # the model's stored thresholds, the primary one its default
    assert rep["thresholds"]["values"] == {"sens_0.95": 0.45, "sens_0.98": 0.40, "sens_0.99": 0.35}
    primary = next(op for op in rep["operating_points"] if op["primary"])
    assert primary["name"] == "sens_0.98"
    assert primary["tp"] == int(np.sum((scores >= 0.40) & (labels == 1)))
    assert rep["as_decided"]["sensitivity"] == primary["sensitivity"]   # the pipeline's own decisions agree
    assert rep["nodule_mass"]["n"] == 4
    assert (out / "report.html").stat().st_size > 20_000


def test_tuning_manifest_overlap_is_caught(small_manifest: Path, shared_data: Path, tiny_model: Path,
                                           tmp_path: Path) -> None:
    """Declaring the films a model's thresholds were chosen on lets the harness check them."""
    root = shared_data / "nih-cxr14"
    tune = tmp_path / "tune.csv"
    lines = small_manifest.read_text().splitlines()
    tune.write_text("\n".join(lines[:6]) + "\n")           # header + 5 of the reported films
    films = sources.read_manifest(small_manifest, root)
    # the tuning manifest's paths must resolve to the same files: write absolute paths
    tuned = sources.read_manifest(tune, root)
    sources.write_manifest(tuned, tune)
    out = tmp_path / "out"
    assert main(["evaluate", str(small_manifest), "--data-root", str(root), "--model", str(tiny_model),
                 "--tuning-manifest", str(tune), "--n-boot", "100", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    prov = rep["thresholds"]["provenance"]
    assert prov["checked"] and prov["overlap"] == 5 and prov["picked_on_reported_films"]
    assert len(films) == 18 and rep["warnings"]


def test_site_threshold_file_for_another_model_is_flagged(small_manifest: Path, shared_data: Path, tiny_model: Path,
                                                          tmp_path: Path) -> None:
    from cxr_triage.inference.site_threshold import SiteThreshold, write_site_threshold

    site = SiteThreshold(site="elsewhere", threshold=0.5, target_sensitivity=0.98, confidence=0.95,
                         ci_method="wilson", model_sha256="f" * 64)
    write_site_threshold(site, tmp_path / "site.json")
    out = tmp_path / "out"
    assert main(["evaluate", str(small_manifest), "--data-root", str(shared_data / "nih-cxr14"), "--model",
                 str(tiny_model), "--thresholds", str(tmp_path / "site.json"), "--n-boot", "100", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert any("made for another model file" in w for w in rep["warnings"])
    assert rep["thresholds"]["values"] == {site.operating_point: 0.5}
