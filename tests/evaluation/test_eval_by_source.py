"""Per-source headline figures (issue 13): a model that learned which source a film came from
looks fine pooled and is caught per source. Synthetic scores; seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr_triage.contract.files import json_safe
from cxr_triage.contract.result import Decision
from cxr_triage.evaluation import analysis, metrics, report
from cxr_triage.evaluation import thresholds as T
from cxr_triage.evaluation.sources import Film, Scored

OPS = {"sens_0.95": 0.40, "sens_0.98": 0.30}


def _film(i: int, source: str, label: int) -> Film:
    return Film(file=f"{source}/f{i:03d}.png", path=Path(f"/nowhere/{source}/f{i:03d}.png"), label=label,
                patient_id=f"{source}-p{i // 2}", key=f"name:{source}{i}", source=source)


def _source_learner() -> tuple[list[Film], list[Scored]]:
    """Source "lowsrc": normals all scored low; "highsrc": normals all scored high (above every
    threshold); "normals-only": one class, all low. Abnormal films 0.45-0.85 in both sources.
    One normal film of lowsrc is not assessable."""
    rng = np.random.default_rng(0)
    films: list[Film] = []
    scored: list[Scored] = []
    for src, normal_range in (("lowsrc", (0.02, 0.2)), ("highsrc", (0.9, 0.99))):
        for i in range(40):
            label = int(i < 20)
            films.append(_film(i, src, label))
            lo, hi = (0.45, 0.85) if label else normal_range
            scored.append(Scored(float(rng.uniform(lo, hi))))
    films.append(_film(99, "lowsrc", 0))
    scored.append(Scored(None, Decision.NOT_ASSESSABLE, "too_small"))
    for i in range(30):
        films.append(_film(i, "normals-only", 0))
        scored.append(Scored(float(rng.uniform(0.02, 0.2))))
    return films, scored


def _thresholds() -> T.ThresholdSet:
    return T.ThresholdSet(dict(OPS), "sens_0.98", source="test thresholds", chosen_on="elsewhere",
                          chosen_on_keys=["name:other"])


def test_by_source_figures_show_a_source_learner() -> None:
    films, scored = _source_learner()
    rep = analysis.evaluate(films, scored, _thresholds(), n_boot=200)
    bs = rep["by_source"]
    # sources with both classes first (by name), then the normals-only one
    assert list(bs) == ["highsrc", "lowsrc", "normals-only"]
    assert rep["pooled"]["sources"] == list(bs) and rep["pooled"]["label"].startswith("pooled")

    low, high, only = bs["lowsrc"], bs["highsrc"], bs["normals-only"]
    assert (low["films"], low["abnormal"], low["normal"], low["assessed"]) == (41, 20, 21, 40)
    assert low["not_assessable"] == {"normal": 1, "abnormal": 0} and low["both_classes"]
    assert (only["films"], only["abnormal"], only["normal"]) == (30, 0, 30) and not only["both_classes"]
    # AUROC per source: perfect where normals are low, zero where they are high, none with one class
    assert low["auroc"]["value"] == pytest.approx(1.0) and low["auroc"]["low"] == pytest.approx(1.0)
    assert high["auroc"]["value"] == pytest.approx(0.0) and high["auroc"]["high"] == pytest.approx(0.0)
    assert "bootstrap" in low["auroc"]["method"] and only["auroc"] is None
    # ... while the pooled AUROC sits in between and hides both
    keep = [s.assessable for s in scored]
    y = np.array([f.label for f, k in zip(films, keep) if k])
    s = np.array([x.score for x, k in zip(scored, keep) if k])
    assert rep["auroc"]["delong"]["value"] == pytest.approx(roc_auc_score(y, s))
    assert 0.3 < rep["auroc"]["delong"]["value"] < 0.9

    for name, t in OPS.items():
        lo_op, hi_op, on_op = (bs[k]["operating_points"][name] for k in ("lowsrc", "highsrc", "normals-only"))
        assert lo_op["threshold"] == t and lo_op["primary"] == (name == "sens_0.98")
        # every abnormal film scores above both thresholds in both sources
        assert lo_op["sensitivity"] == metrics.proportion(20, 20).to_dict() == hi_op["sensitivity"]
        # lowsrc: all 20 assessed normals likely normal; the not-assessable normal never is
        assert lo_op["specificity"] == metrics.proportion(20, 20).to_dict()
        assert lo_op["normals_called_likely_normal"] == metrics.proportion(20, 21).to_dict()
        assert lo_op["normals_called_likely_normal"]["low"] < 20 / 21 < lo_op["normals_called_likely_normal"]["high"]
        # highsrc: none of its normals is called likely normal
        assert hi_op["normals_called_likely_normal"] == metrics.proportion(0, 20).to_dict()
        assert hi_op["normals_called_likely_normal"]["value"] == 0 and hi_op["normals_called_likely_normal"]["high"] > 0
        # normals-only: all likely normal, sensitivity undefined (no abnormal film)
        assert on_op["normals_called_likely_normal"] == metrics.proportion(30, 30).to_dict()
        assert on_op["sensitivity"]["n"] == 0 and on_op["sensitivity"]["value"] is None
    # the pooled operating points are unchanged (same keys as before)
    assert [op["name"] for op in rep["operating_points"]] == ["sens_0.95", "sens_0.98"]
    assert {"auroc", "operating_points", "counts", "sweep", "subgroups"} <= set(rep)


def test_html_and_terminal_lead_with_per_source(tmp_path: Path) -> None:
    films, scored = _source_learner()
    rep = analysis.evaluate(films, scored, _thresholds(), n_boot=100)
    paths = report.write_report(rep, tmp_path)
    data = json.loads(paths["json"].read_text())           # strict JSON (None, not NaN)
    assert data["by_source"]["normals-only"]["auroc"] is None
    html = paths["html"].read_text()
    first = html.index('id="by-source"')
    assert first < html.index('id="pooled"') < html.index("Pooled operating points")
    assert first < html.index("pooled AUROC")
    assert "Pooled figures follow below" in html and "normals called likely normal" in html
    table = html[first:html.index('id="pooled"')]
    for src in ("highsrc", "lowsrc", "normals-only"):
        assert src in table
    assert table.index("highsrc") < table.index("lowsrc") < table.index("normals-only")
    assert "0.0% (0.0-16.1) [0/20]" in table                   # highsrc normals at every threshold
    assert "95.2% (" in table and "[20/21]" in table           # lowsrc: the not-assessable normal counts
    assert "n/a (normal films only)" in table

    lines = report.summary_lines(json_safe(rep))
    assert lines[0].startswith("per source")
    pooled_at = next(i for i, line in enumerate(lines) if line.startswith("pooled over 3 sources (highsrc, lowsrc, normals-only):"))
    src_at = [next(i for i, line in enumerate(lines) if line.startswith(f"  {s}:")) for s in ("highsrc", "lowsrc")]
    assert src_at[0] < src_at[1] < pooled_at
    assert "AUROC 0.000 (0.000-0.000)" in lines[src_at[0]]
    assert any("normals called likely normal 0.000 (0.000-0.161) [0/20]" in line for line in lines[src_at[0]:src_at[1]])
    assert "pooled AUROC" in lines[pooled_at]


def test_cli_prints_per_source_first_from_a_site_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`cxr-triage evaluate` with a scores CSV: a manifest's ``site`` column is the source."""
    from cxr_triage.cli import main
    from cxr_triage.evaluation import sources

    films, scored = _source_learner()
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("file,label,patient_id,site\n" + "".join(
        f"{f.file},{'abnormal' if f.label else 'normal'},{f.patient_id},{f.source}\n" for f in films))
    sources.write_scores_csv(films, scored, tmp_path / "scores.csv")
    _thresholds().save(tmp_path / "thr.json")
    out = tmp_path / "out"
    assert main(["evaluate", str(manifest), "--scores", str(tmp_path / "scores.csv"), "--thresholds",
                 str(tmp_path / "thr.json"), "--n-boot", "100", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("per source")
    assert printed[1].startswith("  highsrc: 40 films") and "AUROC 0.000" in printed[1]
    pooled_at = next(i for i, line in enumerate(printed) if line.startswith("pooled over 3 sources"))
    assert pooled_at > next(i for i, line in enumerate(printed) if line.startswith("  normals-only:"))
    rep = json.loads((out / "report.json").read_text())
    assert list(rep["by_source"]) == ["highsrc", "lowsrc", "normals-only"]
    assert rep["by_source"]["lowsrc"]["operating_points"]["sens_0.98"]["normals_called_likely_normal"]["k"] == 20
