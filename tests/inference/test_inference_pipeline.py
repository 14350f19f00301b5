"""Scorer, decision, Triager and ``cxr-triage predict`` with the tiny ONNX model fixture."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from support.tiny_model import NODULE_THRESHOLDS, build_tiny_model

from cxr_triage.cli import main
from cxr_triage.config import load_config
from cxr_triage.contract.decision import decide
from cxr_triage.contract.preprocessing import preprocess
from cxr_triage.contract.result import Decision, NotAssessableReason
from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom, write_dicom
from cxr_triage.inference.pipeline import Triager
from cxr_triage.inference.scorer import ModelError, Scorer, get_scorer


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, environ={})


@pytest.fixture(scope="module")
def triager(cfg, tiny_model):
    return Triager(cfg.replace(inference={"model_path": str(tiny_model), "threads": 1}))


@pytest.fixture(scope="module")
def pngs(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))[:5]


# ----------------------------------------------------------------------------- decision

def test_decision_rule():
    assert decide(0.40, 0.40) is Decision.SUSPICIOUS          # at the threshold: suspicious
    assert decide(0.3999, 0.40) is Decision.LIKELY_NORMAL
    assert decide(0.99, 0.40) is Decision.SUSPICIOUS
    assert decide(float("nan"), 0.40) is Decision.SUSPICIOUS  # never "normal" by accident


# ----------------------------------------------------------------------------- scorer

def test_scorer_reads_metadata_and_matches_the_graph(tiny_model):
    scorer = Scorer(tiny_model, threads=1, batch_size=2)
    assert scorer.metadata.name == "tiny-test-model"
    assert scorer.metadata.threshold() == ("sens_0.98", 0.40)
    rng = np.random.default_rng(1)
    batch = rng.normal(size=(5, 1, 224, 224)).astype(np.float32)
    scores, nodule, heat = scorer.score(batch)  # 3 ORT runs of <= 2 films
    assert nodule is None and not scorer.has_nodule  # no nodule/mass output
    # the tiny graph: sigmoid(4 * mean(x)); heatmap = sigmoid(avgpool32(x))
    expected = 1.0 / (1.0 + np.exp(-4.0 * batch.reshape(5, -1).mean(axis=1)))
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    assert heat is not None and heat.shape == (5, 7, 7)
    pooled = batch[:, 0].reshape(5, 7, 32, 7, 32).mean(axis=(2, 4))
    np.testing.assert_allclose(heat, 1.0 / (1.0 + np.exp(-pooled)), rtol=1e-4)
    one_by_one = np.concatenate([scorer.score(batch[i:i + 1]).scores for i in range(5)])
    np.testing.assert_allclose(one_by_one, scores, rtol=1e-6)


def test_one_session_per_process(tiny_model):
    assert get_scorer(tiny_model, 1) is get_scorer(tiny_model, 1)


def test_model_without_metadata_or_file_is_refused(tiny_model, tmp_path):
    model = onnx.load(str(tiny_model))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(ModelError, match="metadata"):
        Scorer(bare)
    with pytest.raises(ModelError, match="not found"):
        Scorer(tmp_path / "missing.onnx")


# ----------------------------------------------------------------------------- pipeline

def test_sample_dicoms(triager, sample_dicoms):
    results = {Path(r.source).stem: r for r in triager.triage_paths(sorted(sample_dicoms.values()))}
    canine = results.pop("highdicom_dx_canine_thorax_mono1")
    assert canine.decision is Decision.NOT_ASSESSABLE and canine.reason is NotAssessableReason.NON_HUMAN
    assert canine.score is None and canine.sop_instance_uid
    assert len(results) == 3
    for r in results.values():
        assert r.decision is decide(r.score, r.threshold) and r.decision is not Decision.NOT_ASSESSABLE
        assert 0.0 <= r.score <= 1.0 and r.threshold == 0.40 and r.operating_point == "sens_0.98"
        assert r.model_name == "tiny-test-model" and r.model_version == "0.0.1-test"
        assert {"decode", "gate", "preprocess", "model", "total"} <= set(r.timings_ms)
        assert r.heatmap is not None and r.heatmap.shape == (7, 7)
        assert r.study_instance_uid and r.sop_class_uid


def test_score_equals_model_on_preprocessed_film(triager, pngs):
    from cxr_triage.inference.reader import read_film

    result = triager.triage_file(pngs[0])
    x = preprocess(read_film(pngs[0]).pixels, triager.spec)
    assert result.score == pytest.approx(1.0 / (1.0 + np.exp(-4.0 * x.mean())), rel=1e-5)


def test_png_and_its_dicom_wrap_score_alike(triager, pngs, tmp_path):
    """Different containers, same film: same score (preprocessing is affine-invariant)."""
    for png in pngs[:3]:
        ds = png_to_dicom(png, sop_class="CR", bits_stored=12, photometric="MONOCHROME1")
        from_png = triager.triage_file(png)
        from_dicom = triager.triage_dataset(ds, source="mem")
        assert from_dicom.score == pytest.approx(from_png.score, abs=1e-3)


def test_folder_with_bad_files(triager, pngs, tmp_path):
    for png in pngs[:3]:
        shutil.copy(png, tmp_path / png.name)
    (tmp_path / "sub").mkdir()
    write_dicom(png_to_dicom(pngs[3], sop_class="CR", view_position="LL"), tmp_path / "sub" / "lat.dcm")
    (tmp_path / "broken.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x01" * 50)
    (tmp_path / "notes.txt").write_text("not a film")  # skipped in folders
    results = triager.triage_paths([tmp_path])
    assert len(results) == 5
    by_name = {Path(r.source).name: r for r in results}
    assert by_name["broken.dcm"].reason is NotAssessableReason.UNDECODABLE
    assert by_name["lat.dcm"].reason is NotAssessableReason.LATERAL_VIEW
    assert sum(r.score is not None for r in results) == 3


def test_operating_points_and_threshold_override(cfg, tiny_model, pngs):
    base = cfg.replace(inference={"model_path": str(tiny_model)})
    assert Triager(base, operating_point="sens_0.95").threshold == 0.45
    everything = Triager(base, threshold=0.0, operating_point="site:test")
    r = everything.triage_file(pngs[0])
    assert r.decision is Decision.SUSPICIOUS and r.operating_point == "site:test" and r.threshold == 0.0
    assert Triager(base, threshold=1.0).triage_file(pngs[0]).decision is Decision.LIKELY_NORMAL
    with pytest.raises(ModelError, match="no operating point"):
        Triager(base, operating_point="sens_0.5")
    with pytest.raises(ModelError, match="model file not found"):
        Triager(cfg.replace(inference={"model_path": "/nonexistent/model.onnx"}))


def test_site_threshold_file_bound_to_model(cfg, tiny_model, tmp_path):
    from cxr_triage.inference.site_threshold import (
        SiteThreshold,
        SiteThresholdMismatch,
        sha256_file,
        write_site_threshold,
    )

    def site_file(sha: str) -> Path:
        return write_site_threshold(SiteThreshold(
            site="test", threshold=0.37, target_sensitivity=0.98, confidence=0.95,
            ci_method="wilson", model_sha256=sha), tmp_path / f"{sha[:4]}.json")

    good = site_file(sha256_file(tiny_model))
    t = Triager(cfg.replace(inference={"model_path": str(tiny_model), "site_threshold_file": str(good)}))
    assert t.threshold == 0.37 and t.operating_point.startswith("site:test")
    bad = site_file("0" * 64)
    with pytest.raises(SiteThresholdMismatch):
        Triager(cfg.replace(inference={"model_path": str(tiny_model), "site_threshold_file": str(bad)}))


# ----------------------------------------------------------------------------- CLI

def test_predict_json_on_the_sample_dicoms(model_path, sample_dicoms, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cxr-triage"])
    monkeypatch.delenv("CXR_TRIAGE_CONFIG", raising=False)
    rc = main(["predict", *map(str, sorted(sample_dicoms.values())), "--json", "--model", str(model_path)])
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == len(sample_dicoms) == 4
    by_name = {Path(d["source"]).stem: d for d in lines}
    canine = by_name.pop("highdicom_dx_canine_thorax_mono1")
    assert canine["decision"] == "not_assessable" and canine["reason"] == "non_human"
    for d in by_name.values():
        assert d["decision"] in ("likely_normal", "suspicious") and 0.0 <= d["score"] <= 1.0


def test_predict_table_and_errors(tiny_model, sample_dicoms, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cxr-triage"])
    folder = str(next(iter(sample_dicoms.values())).parent)
    assert main(["predict", folder, "--model", str(tiny_model), "--operating-point", "sens_0.95"]) == 0
    out = capsys.readouterr().out
    assert "siim_cr_chest_pa.dcm" in out and "non_human" in out and "sens_0.95" in out
    assert main(["predict", "/nonexistent/film.dcm", "--model", str(tiny_model)]) == 2
    assert main(["predict", folder, "--model", str(tiny_model), "--operating-point", "nope"]) == 2


def test_predict_console_script(tiny_model, sample_dicoms):
    exe = Path(sys.executable).parent / "cxr-triage"
    path = str(sample_dicoms["siim_cr_chest_pa"])
    proc = subprocess.run([str(exe), "predict", path, "--json", "--model", str(tiny_model)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["sop_instance_uid"]


@pytest.mark.parametrize("sop_class", ["CR", "DX_PRES", "DX_PROC", "SC"])
def test_every_supported_sop_class_is_assessed(triager, pngs, sop_class):
    ds = png_to_dicom(pngs[0], sop_class=sop_class, bits_stored=10)
    result = triager.triage_dataset(ds, source=f"{sop_class}.dcm")
    assert result.decision is not Decision.NOT_ASSESSABLE, result.reason_detail
    assert result.sop_class_uid == str(ds.SOPClassUID)


# ----------------------------------------------------------------------------- nodule/mass output

def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


@pytest.fixture(scope="module")
def nodule_triager(cfg, tiny_nodule_model):
    return Triager(cfg.replace(inference={"model_path": str(tiny_nodule_model), "threads": 1}))


def test_scorer_reads_the_nodule_output_only_with_thresholds(tiny_nodule_model, tmp_path):
    scorer = Scorer(tiny_nodule_model, threads=1, batch_size=2)
    assert scorer.has_nodule and scorer.metadata.nodule_threshold() == ("sens_0.9", 0.5)
    batch = np.random.default_rng(2).normal(size=(3, 1, 224, 224)).astype(np.float32)
    out = scorer.score(batch)
    m = batch.reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(out.scores, _sigmoid(4.0 * m), rtol=1e-5)
    assert out.nodule_scores is not None and out.nodule_scores.shape == (3,)
    np.testing.assert_allclose(out.nodule_scores, _sigmoid(-4.0 * m), rtol=1e-5)
    assert out.heatmaps is not None and out.heatmaps.shape == (3, 7, 7)
    # the output without operating points to call it at is not used
    unusable = Scorer(build_tiny_model(tmp_path / "u.onnx", nodule=True, nodule_thresholds={}), threads=1)
    assert not unusable.has_nodule and unusable.score(batch).nodule_scores is None


def test_triager_fills_the_nodule_fields_and_keeps_the_decision(nodule_triager, triager, pngs):
    assert (nodule_triager.nodule_operating_point, nodule_triager.nodule_threshold) == ("sens_0.9", 0.5)
    results = nodule_triager.triage_paths(pngs)
    plain = triager.triage_paths(pngs)
    for r, p in zip(results, plain):
        # an added finding: decision and score as from the same model without the output
        assert r.decision is p.decision and r.score == pytest.approx(p.score)
        assert r.nodule_score == pytest.approx(1.0 - r.score, abs=1e-5)  # the tiny graph's nodule output
        assert r.nodule_threshold == 0.5 and r.nodule_flag is (r.nodule_score >= 0.5)
        assert p.nodule_score is None and p.nodule_threshold is None and p.nodule_flag is None
    assert {r.nodule_flag for r in results} == {True, False}, [r.score for r in results]


def test_nodule_operating_point_from_config_and_argument(cfg, tiny_nodule_model, tiny_model, pngs):
    base = cfg.replace(inference={"model_path": str(tiny_nodule_model), "threads": 1})
    assert Triager(base.replace(inference={"nodule_operating_point": "sens_0.8"})).nodule_threshold == 0.6
    t = Triager(base.replace(inference={"nodule_operating_point": "sens_0.8"}), nodule_operating_point="sens_0.95")
    assert (t.nodule_operating_point, t.nodule_threshold) == ("sens_0.95", NODULE_THRESHOLDS["sens_0.95"])
    assert t.triage_file(pngs[0]).nodule_threshold == 0.4
    with pytest.raises(ModelError, match="no nodule/mass operating point"):
        Triager(base, nodule_operating_point="sens_0.5")
    # a model without the output ignores the key
    plain = Triager(cfg.replace(inference={"model_path": str(tiny_model), "nodule_operating_point": "sens_0.5"}))
    assert plain.nodule_threshold is None and plain.nodule_operating_point is None


def test_nodule_not_assessable_films_have_no_nodule_result(nodule_triager, sample_dicoms):
    canine = nodule_triager.triage_file(sample_dicoms["highdicom_dx_canine_thorax_mono1"])
    assert canine.decision is Decision.NOT_ASSESSABLE
    assert canine.nodule_score is None and canine.nodule_flag is None and canine.nodule_threshold is None


def test_heatmap_kept_only_when_validated(cfg, tmp_path, pngs):
    unvalidated = build_tiny_model(tmp_path / "unvalidated.onnx", heatmap_validated=False)
    t = Triager(cfg.replace(inference={"model_path": str(unvalidated), "threads": 1}))
    r = t.triage_file(pngs[0])
    assert r.score is not None and r.heatmap is None
    assert t.scorer.score(preprocess(np.full((256, 256), 0.5, np.float32), t.spec)[None]).heatmaps is not None


def test_predict_json_and_table_carry_the_nodule_flag(tiny_nodule_model, tiny_model, sample_dicoms, capsys,
                                                      monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cxr-triage"])
    monkeypatch.delenv("CXR_TRIAGE_CONFIG", raising=False)
    files = [str(p) for p in sorted(sample_dicoms.values())]
    assert main(["predict", *files, "--json", "--model", str(tiny_nodule_model)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for d in lines:
        assert {"nodule_score", "nodule_threshold", "nodule_flag"} <= set(d)
        if d["decision"] == "not_assessable":
            assert d["nodule_score"] is d["nodule_flag"] is None
        else:
            assert 0.0 <= d["nodule_score"] <= 1.0 and d["nodule_threshold"] == 0.5
            assert d["nodule_flag"] is (d["nodule_score"] >= 0.5)
    assert sum(d["nodule_score"] is not None for d in lines) == 3
    assert main(["predict", *files, "--model", str(tiny_nodule_model), "--nodule-operating-point", "sens_0.8"]) == 0
    table = capsys.readouterr().out
    assert "NODULE/MASS" in table and "nodule/mass flag at operating point sens_0.8: flagged when score >= 0.6000" in table
    flagged = [d for d in lines if d["nodule_score"] is not None and d["nodule_score"] >= 0.6]
    assert table.count("FLAGGED") == len(flagged)
    # a model without the output: no nodule/mass column, and null fields in the JSON
    assert main(["predict", files[0], "--model", str(tiny_model)]) == 0
    assert "NODULE" not in capsys.readouterr().out.upper()
    assert main(["predict", files[0], "--json", "--model", str(tiny_model)]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["nodule_score"] is None and plain["nodule_flag"] is None
