"""Commissioning on real films: the chosen threshold meets the lower-bound rule, and it is the
highest that does (checked here with independent formulas, not the code under test)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import beta, norm

from cxr_triage.config import load_config
from cxr_triage.evaluation import sources
from cxr_triage.evaluation.commission import InsufficientEvidence, commission
from cxr_triage.inference.site_threshold import check_matches_model, load_site_threshold

CLI = [sys.executable, "-m", "cxr_triage.cli"]


def clopper_pearson_low(k: int, n: int, confidence: float = 0.95) -> float:
    """Lower end of the two-sided exact interval, from the beta quantile."""
    return 0.0 if k == 0 else float(beta.ppf((1 - confidence) / 2, k, n - k + 1))


def wilson_low(k: int, n: int, confidence: float = 0.95) -> float:
    z = norm.ppf(0.5 + confidence / 2)
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n)


LOWS = {"exact": clopper_pearson_low, "wilson": wilson_low}


def brute_force_threshold(y: np.ndarray, s: np.ndarray, target: float, method: str) -> float | None:
    """The highest candidate threshold (any observed score) whose sensitivity lower bound meets
    the target: every candidate is tried, no shortcut."""
    n_abn = int(y.sum())
    best = None
    for t in np.unique(s):
        k = int(np.sum((s >= t) & (y == 1)))
        if LOWS[method](k, n_abn) >= target and (best is None or t > best):
            best = float(t)
    return best


def write_manifest(rows: list[dict[str, str]], base: Path, path: Path) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "patient_id", "age", "sex", "view"])
        for r in rows:
            w.writerow([str(base / r["file"]), r["label"], r["patient_id"], r["age"], r["sex"], r["view"]])
    return path


@pytest.fixture(scope="module")
def scored_site(shared_data: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """NIH ChestX-ray14 development films (all 76 normal, the first 250 abnormal: enough for
    the 0.98 lower-bound rule), scored by the worker's own pipeline."""
    tmp = tmp_path_factory.mktemp("commission")
    rows = list(csv.DictReader((shared_data / "nih-cxr14" / "labels.csv").open()))
    rows = [r for r in rows if r["label"] == "normal"] + [r for r in rows if r["label"] == "abnormal"][:250]
    manifest = write_manifest(rows, shared_data / "nih-cxr14", tmp / "site_manifest.csv")
    films = sources.read_manifest(manifest)
    cfg = load_config(None, environ={}).replace(inference={"threads": 1})
    scored = sources.scores_from_model(films, model_path, cfg)
    scores_csv = sources.write_scores_csv(films, scored, tmp / "scores.csv")
    return {"tmp": tmp, "manifest": manifest, "films": films, "scored": scored, "scores_csv": scores_csv}


@pytest.mark.parametrize("method", ["exact", "wilson"])
def test_chosen_threshold_meets_the_lower_bound_rule_and_is_the_highest(scored_site, model_path: Path,
                                                                         method: str) -> None:
    films, scored = scored_site["films"], scored_site["scored"]
    site = commission(films, scored, model_path, "nih-dev", target=0.98, confidence=0.95, method=method,
                      also_targets=())

    keep = [i for i, sc in enumerate(scored) if sc.assessable]
    y = np.array([films[i].label for i in keep])
    s = np.array([scored[i].score for i in keep], dtype=float)
    n_abn = int(y.sum())
    assert n_abn >= 183, "the NIH set has enough abnormal films for the 0.98 lower-bound rule"

    # the rule holds at the chosen threshold (independent interval formula) ...
    k = int(np.sum((s >= site.threshold) & (y == 1)))
    assert LOWS[method](k, n_abn) >= 0.98
    # ... and fails at every higher candidate: it is the highest threshold that satisfies it
    higher = np.unique(s[s > site.threshold])
    for t in higher[:50]:
        assert LOWS[method](int(np.sum((s >= t) & (y == 1))), n_abn) < 0.98
    assert site.threshold == pytest.approx(brute_force_threshold(y, s, 0.98, method))

    # the evidence recounts
    at = site.evidence["at_threshold"]
    tn = int(np.sum((s < site.threshold) & (y == 0)))
    assert (at["tp"], at["fn"], at["tn"]) == (k, n_abn - k, tn)
    assert at["sensitivity_lower_bound"] == pytest.approx(LOWS[method](k, n_abn), abs=1e-9)
    assert at["specificity"]["value"] == pytest.approx(tn / int(np.sum(y == 0)))
    n_na = len(films) - len(keep)
    assert at["workload_all"]["k"] == tn + (n_abn - k) and at["workload_all"]["n"] == len(films)
    assert site.evidence["not_assessable"]["n"] == n_na
    assert site.model_sha256 == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert len(site.source["table_sha256"]) == 64
    assert site.ci_method == {"exact": "clopper-pearson", "wilson": "wilson"}[method]
    assert len(site.baseline["scores"]) == len(keep)


def test_brute_force_agrees_on_many_synthetic_sets() -> None:
    """The shortcut (k*-th highest abnormal score) against trying every threshold."""
    from cxr_triage.evaluation.sources import Film, Scored

    rng = np.random.default_rng(7)
    for trial in range(4):
        n = int(rng.integers(300, 600))
        y = (rng.random(n) < rng.uniform(0.4, 0.8)).astype(int)
        s = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1).round(3)  # ties on purpose
        films = [Film(file=f"f{i}", path=Path(f"f{i}"), label=int(y[i]), patient_id=str(i), key=f"name:f{i}")
                 for i in range(n)]
        scored = [Scored(score=float(v)) for v in s]
        method = "exact" if trial % 2 else "wilson"
        expected = brute_force_threshold(y, s, 0.98, method)
        if expected is None:
            with pytest.raises(InsufficientEvidence):
                commission(films, scored, Path(__file__), "synthetic", method=method, also_targets=())
            continue
        got = commission(films, scored, Path(__file__), "synthetic", method=method, also_targets=())
        assert got.threshold == pytest.approx(expected)


def test_cli_writes_a_loadable_file_bound_to_the_model(scored_site, model_path: Path) -> None:
    out = scored_site["tmp"] / "site_threshold.json"
    proc = subprocess.run(
        [*CLI, "commission", "--manifest", str(scored_site["manifest"]), "--scores", str(scored_site["scores_csv"]),
         "--model", str(model_path), "--site", "nih-dev", "--also-targets", "", "--out", str(out)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "lower 95% bound (clopper-pearson)" in proc.stdout
    site = check_matches_model(out, model_path)
    data = json.loads(out.read_text())
    assert data["format"] == "cxr-triage-site-threshold" and data["format_version"] == 1
    assert data["created"] and data["evidence"]["n_films"] == len(scored_site["films"])
    assert ({Path(p).resolve() for p in data["source"]["files"]}
            == {scored_site["manifest"].resolve(), scored_site["scores_csv"].resolve()})
    keep = [i for i, sc in enumerate(scored_site["scored"]) if sc.assessable]
    y = np.array([scored_site["films"][i].label for i in keep])
    s = np.array([scored_site["scored"][i].score for i in keep], dtype=float)
    assert site.threshold == pytest.approx(brute_force_threshold(y, s, 0.98, "exact"))  # the CLI default
    assert load_site_threshold(out).evidence["at_threshold"]["sensitivity_lower_bound"] >= 0.98


def test_too_few_abnormal_films_is_refused_with_the_number_needed(scored_site, model_path: Path) -> None:
    rows = list(csv.DictReader(scored_site["manifest"].open()))
    abnormal = [r for r in rows if r["label"] == "abnormal"][:120]
    normal = [r for r in rows if r["label"] == "normal"]
    small = scored_site["tmp"] / "small.csv"
    with small.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(abnormal + normal)
    proc = subprocess.run(
        [*CLI, "commission", "--manifest", str(small), "--scores", str(scored_site["scores_csv"]),
         "--model", str(model_path), "--site", "small", "--also-targets", "", "--out",
         str(scored_site["tmp"] / "no.json")],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    assert "at least 183 abnormal films are needed" in proc.stderr
    assert not (scored_site["tmp"] / "no.json").exists()


def test_commission_from_srs_refuses_srs_of_another_model(shared_data: Path, tiny_model: Path,
                                                         tmp_path: Path) -> None:
    """SRs record the model name and version; commissioning another model on them is refused.
    With the right model the SR path reaches the rule (here: too few films, exit 3)."""
    import onnx
    from pydicom.uid import generate_uid
    from support.commission_support import as_dicom, film_pool

    from cxr_triage.contract.model_file import METADATA_KEY, ModelMetadata
    from cxr_triage.contract.result import aggregate_study
    from cxr_triage.dicom_node.results.sr import build_result_sr
    from cxr_triage.inference.pipeline import Triager

    triager = Triager(load_config(None, environ={}).replace(inference={"model_path": str(tiny_model), "threads": 1}))
    srs, rows = tmp_path / "srs", []
    srs.mkdir()
    for f in film_pool(shared_data)[:4]:
        ds = as_dicom(f)
        ds.StudyInstanceUID = study = generate_uid()
        agg = aggregate_study(study, [triager.triage_dataset(ds, str(f.path))])
        build_result_sr(agg, [ds], triager.meta).save_as(srs / f"{study}.dcm")
        rows.append([str(f.path), "abnormal" if f.label else "normal", study])
    manifest = tmp_path / "reads.csv"
    with manifest.open("w", newline="") as fh:
        csv.writer(fh).writerows([["file", "label", "study_instance_uid"], *rows])

    newer = onnx.load(str(tiny_model))
    meta = ModelMetadata.from_json(next(p.value for p in newer.metadata_props if p.key == METADATA_KEY))
    meta.version = "0.0.2-test"
    for prop in newer.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = meta.to_json()
    onnx.save(newer, str(tmp_path / "newer.onnx"))

    def run(model: Path) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, "commission", "--manifest", str(manifest), "--srs", str(srs), "--model",
                               str(model), "--site", "x", "--also-targets", "", "--out", str(tmp_path / "o.json")],
                              capture_output=True, text=True, timeout=120)

    wrong = run(tmp_path / "newer.onnx")
    assert wrong.returncode == 2
    assert "produced by tiny-test-model 0.0.1-test, not by tiny-test-model 0.0.2-test" in wrong.stderr
    right = run(tiny_model)
    assert right.returncode == 3 and "abnormal films are needed" in right.stderr
