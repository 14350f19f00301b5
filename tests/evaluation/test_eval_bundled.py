"""`make evaluate` (evaluation.bundled_report) on a few test-split films with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr_triage.evaluation import bundled_report


@pytest.mark.skipif(not bundled_report.DEFAULT_SPLIT.exists(), reason="model/default_split.csv not committed yet")
def test_bundled_report_on_test_split(shared_data: Path, tiny_model: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    rc = bundled_report.main(["--data", str(shared_data), "--model", str(tiny_model), "--out", str(out),
                              "--limit", "24", "--n-boot", "100"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["counts"]["films"] == 24
    test_files = {f.file for f in bundled_report.split_films(bundled_report.DEFAULT_SPLIT, shared_data, "test")}
    assert {f["file"] for f in rep["films"]} <= test_files
    prov = rep["thresholds"]["provenance"]
    # thresholds from the model, chosen on the validation split: checked and disjoint
    assert prov["checked"] and prov["overlap"] == 0 and prov["n_chosen_on"] > 0 and rep["warnings"] == []
    assert (out / "report_nih.html").exists() and (out / "test_scores.csv").exists()
    # per source first (JSON, HTML, terminal), then the pooled figures labelled as pooled
    assert sum(f["films"] for f in rep["by_source"].values()) == 24 and rep["pooled"]["sources"] == list(rep["by_source"])
    html = (out / "report.html").read_text()
    assert html.index('id="by-source"') < html.index('id="pooled"')
    printed = capsys.readouterr().out.splitlines()
    head = printed.index("  per source (headline: a pooled figure hides a model that learned which source a film came from):")
    first_src = next(iter(rep["by_source"]))
    assert printed[head + 1].startswith(f"    {first_src}: ")
    assert any(line.startswith("  pooled over ") for line in printed[head + 1:])
    png = out / "report_first_page.png"
    if png.exists():  # chromium present (CI installs it)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_missing_split_or_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bundled_report.main(["--split", str(tmp_path / "none.csv"), "--model", str(tmp_path / "m.onnx"),
                                "--out", str(tmp_path / "o"), "--no-screenshot"]) == 2
    assert "none.csv not found" in capsys.readouterr().err
