"""The site threshold file: validated on load, bound to one model file, refused for another
by the Triager, ``cxr-triage predict`` and ``cxr-triage serve``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.tiny_model import build_tiny_model

from cxr_triage.config import load_config
from cxr_triage.inference.site_threshold import (
    SiteThreshold,
    SiteThresholdError,
    SiteThresholdMismatch,
    check_matches_model,
    load_site_threshold,
    write_site_threshold,
)

CLI = [sys.executable, "-m", "cxr_triage.cli"]


def _site_for(model: Path, threshold: float = 0.61, site: str = "test-site") -> SiteThreshold:
    return SiteThreshold(
        site=site, threshold=threshold, target_sensitivity=0.98, confidence=0.95,
        ci_method="clopper-pearson", model_sha256=hashlib.sha256(model.read_bytes()).hexdigest(),
        model_name="tiny-test-model", model_version="0.0.1-test", model_file=model.name,
    )


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same contract, different weights: what a model update looks like to the site file."""
    return build_tiny_model(tmp_path_factory.mktemp("other") / "other.onnx", weight=3.0)


def test_round_trip_and_binding(tmp_path: Path, tiny_model: Path) -> None:
    path = write_site_threshold(_site_for(tiny_model), tmp_path / "site.json")
    loaded = load_site_threshold(path)
    assert loaded.threshold == pytest.approx(0.61)
    assert loaded.model_sha256 == hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert check_matches_model(path, tiny_model).site == "test-site"
    assert loaded.operating_point.startswith("site:test-site:")


@pytest.mark.parametrize("change, message", [
    ({"format": "something-else"}, "format"),
    ({"threshold": 1.5}, "outside"),
    ({"threshold": "0.5"}, "wrong type"),
    ({"model_sha256": "abc"}, "64-digit"),
    ({"format_version": 99}, "newer"),
])
def test_invalid_files_are_refused(tmp_path: Path, tiny_model: Path, change: dict, message: str) -> None:
    data = _site_for(tiny_model).to_dict()
    data.update(change)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SiteThresholdError, match=message):
        load_site_threshold(path)


def test_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(SiteThresholdError, match="not found"):
        load_site_threshold(tmp_path / "nope.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(SiteThresholdError, match="not readable JSON"):
        load_site_threshold(tmp_path / "junk.json")


def test_mismatch_names_both_models(tmp_path: Path, tiny_model: Path, other_model: Path) -> None:
    path = write_site_threshold(_site_for(tiny_model), tmp_path / "site.json")
    with pytest.raises(SiteThresholdMismatch) as err:
        check_matches_model(path, other_model)
    text = str(err.value)
    assert "commissioned for tiny-test-model 0.0.1-test" in text
    assert hashlib.sha256(other_model.read_bytes()).hexdigest()[:16] in text
    assert "cxr-triage commission" in text


def test_triager_uses_matching_file_and_refuses_other_model(tmp_path: Path, tiny_model: Path,
                                                            other_model: Path, sample_dicoms: dict) -> None:
    from cxr_triage.inference.pipeline import Triager

    path = write_site_threshold(_site_for(tiny_model, threshold=0.9), tmp_path / "site.json")
    cfg = load_config(None, environ={}).replace(
        inference={"model_path": str(tiny_model), "site_threshold_file": str(path), "threads": 1})
    triager = Triager(cfg)
    assert triager.threshold == pytest.approx(0.9)
    assert triager.operating_point == "site:test-site:sens_0.98_lb95"
    film = next(p for name, p in sample_dicoms.items() if name.startswith("nih_gcp"))
    result = triager.triage_file(film)
    assert result.threshold == pytest.approx(0.9) and result.operating_point == triager.operating_point
    assert (result.decision.value == "suspicious") == (result.score >= 0.9)

    with pytest.raises(SiteThresholdMismatch):
        Triager(cfg.replace(inference={"model_path": str(other_model)}))


def _env(model: Path, site_file: Path, state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_TRIAGE__")}
    env.update({
        "CXR_TRIAGE__INFERENCE__MODEL_PATH": str(model),
        "CXR_TRIAGE__INFERENCE__SITE_THRESHOLD_FILE": str(site_file),
        "CXR_TRIAGE__INFERENCE__THREADS": "1",
        "CXR_TRIAGE__NODE__STATE_DIR": str(state),
        "CXR_TRIAGE__WEB__ENABLED": "false",
    })
    env.pop("CXR_TRIAGE_CONFIG", None)
    return env


def test_predict_and_serve_refuse_a_file_made_for_another_model(
        tmp_path: Path, tiny_model: Path, other_model: Path, sample_dicoms: dict, port: int) -> None:
    site_file = write_site_threshold(_site_for(tiny_model), tmp_path / "site.json")
    env = _env(other_model, site_file, tmp_path / "var")
    film = str(sample_dicoms["nih_gcp_dx_chest_nofinding"])  # assessable: reports its operating point

    pred = subprocess.run([*CLI, "predict", film], env=env, capture_output=True, text=True, timeout=60)
    assert pred.returncode != 0
    assert "commissioned for tiny-test-model" in pred.stderr and "Traceback" not in pred.stderr

    serve = subprocess.run([*CLI, "serve", "--port", str(port)], env=env, capture_output=True,
                           text=True, timeout=60)
    assert serve.returncode != 0, "serve must refuse to start (it would otherwise run until killed)"
    assert "commissioned for tiny-test-model" in serve.stderr and "Traceback" not in serve.stderr

    # the same file with the model it was made for: predict runs and reports the site point
    ok = subprocess.run([*CLI, "predict", "--json", film], env=_env(tiny_model, site_file, tmp_path / "v2"),
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.splitlines()[0])["operating_point"] == "site:test-site:sens_0.98_lb95"
