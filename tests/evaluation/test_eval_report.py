"""Report generation on synthetic scores, the scores-CSV path of `cxr-triage evaluate`, and the
loud warning when thresholds were picked on the reported films."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr_triage.cli import main
from cxr_triage.contract.files import json_safe
from cxr_triage.contract.result import Decision
from cxr_triage.evaluation import analysis, report, sources
from cxr_triage.evaluation import thresholds as T
from cxr_triage.evaluation.sources import Film, Scored

PICKED = "THRESHOLDS WERE PICKED ON THE REPORTED FILMS"


def _synthetic(n: int = 240, seed: int = 0) -> tuple[list[Film], list[Scored], list[Scored]]:
    rng = np.random.default_rng(seed)
    films, a, b = [], [], []
    for i in range(n):
        y = int(rng.random() < 0.55)
        s = float(np.clip(rng.normal(0.35 + 0.3 * y, 0.17), 0, 1))
        nodule = bool(y and i % 5 == 0)
        films.append(Film(
            file=f"images/f{i:03d}.png", path=Path(f"/nowhere/f{i:03d}.png"), label=y, patient_id=f"p{i // 2}",
            key=f"name:f{i}", sex="MF"[i % 2], age=float(18 + i % 75), view="AP" if i % 3 == 0 else "PA",
            source="A" if i < n / 2 else "B",
            findings=("Nodule" if nodule else "Effusion") if y else "No Finding", nodule_or_mass=nodule,
            extra={"nodule_size_mm": str(4 + i % 40) if nodule else "", "subtlety": str(1 + i % 5) if nodule else ""},
        ))
        refused = i % 40 == 7
        a.append(Scored(None, Decision.NOT_ASSESSABLE, "too_small") if refused else Scored(s))
        b.append(Scored(float(np.clip(s + rng.normal(0, 0.2), 0, 1))))
    return films, a, b


def test_report_on_synthetic_scores(tmp_path: Path) -> None:
    films, scored, other = _synthetic()
    ts = T.ThresholdSet({"sens_0.95": 0.42, "sens_0.98": 0.36, "sens_0.99": 0.30}, "sens_0.98",
                        source="test thresholds", chosen_on="elsewhere", chosen_on_keys=["name:other"])
    rep = analysis.evaluate(films, scored, ts, compare=other, compare_name="noisy", n_boot=300,
                            inputs={"source": {"kind": "synthetic"}})
    paths = report.write_report(rep, tmp_path)

    data = json.loads(paths["json"].read_text())          # strict JSON: no NaN
    keep = [s.assessable for s in scored]
    y = np.array([f.label for f, k in zip(films, keep) if k])
    s = np.array([x.score for x, k in zip(scored, keep) if k])
    assert data["auroc"]["delong"]["value"] == pytest.approx(roc_auc_score(y, s))
    assert data["counts"]["not_assessable"]["by_reason"] == {"too_small": sum(not k for k in keep)}
    assert data["warnings"] == [] and not data["thresholds"]["provenance"]["picked_on_reported_films"]
    primary = next(op for op in data["operating_points"] if op["primary"])
    assert primary["name"] == "sens_0.98"
    missed = [f.file for f, x in zip(films, scored) if x.assessable and f.label == 1 and x.score < 0.36]
    assert sorted(m["file"] for m in data["missed"]) == sorted(missed) and primary["fn"] == len(missed)
    nm = data["nodule_mass"]
    assert nm["n"] == sum(f.nodule_or_mass for f, k in zip(films, keep) if k)
    assert sum(r["n"] for r in nm["by_size"]) == nm["n"] and nm["by_subtlety"]
    assert {"sex", "age_band", "view", "source", "finding"} <= set(data["subgroups"])
    assert data["comparison"]["model_b"] == "noisy"
    assert len(data["sweep"]) == 7 and data["calibration"]["ece"] >= 0

    html = paths["html"].read_text()
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 3      # ROC, distributions, reliability
    assert not re.search(r'(src|href)="https?:', html)                     # self-contained
    for m in data["missed"]:
        assert m["file"] in html
    assert PICKED not in html and "Paired comparison with noisy" in html


def test_thresholds_fitted_on_reported_films_are_flagged(tmp_path: Path) -> None:
    films, scored, _ = _synthetic(seed=2)
    keep = [s.assessable for s in scored]
    ts = T.choose_thresholds([f.label for f, k in zip(films, keep) if k], [s.score for s, k in zip(scored, keep) if k],
                             [f.key for f, k in zip(films, keep) if k], chosen_on="the same films")
    rep = analysis.evaluate(films, scored, ts, n_boot=100)
    assert rep["thresholds"]["provenance"]["picked_on_reported_films"]
    assert any(PICKED in w for w in rep["warnings"])
    html = report.render_html(json_safe(rep))
    assert f'class="banner">&#9888; {PICKED}' in html
    # fitted here, so the primary operating point meets its target on these films by construction
    primary = next(op for op in rep["operating_points"] if op["primary"])
    assert primary["sensitivity"]["value"] >= 0.98


def _write_manifest(path: Path, films: list[Film], data_root: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "patient_id", "age", "sex", "view", "findings", "nodule_or_mass"])
        for f in films:
            (data_root / f.file).parent.mkdir(parents=True, exist_ok=True)
            (data_root / f.file).write_bytes(f.file.encode())   # stand-in content: distinct per film
            w.writerow([f.file, "abnormal" if f.label else "normal", f.patient_id, f.age, f.sex, f.view,
                        f.findings, int(f.nodule_or_mass)])


def test_cli_scores_csv_path_and_threshold_provenance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    films, scored, _ = _synthetic(seed=3)
    root = tmp_path / "data"
    tune_films, eval_films = films[:120], films[120:]
    _write_manifest(tmp_path / "tune.csv", tune_films, root)
    _write_manifest(tmp_path / "eval.csv", eval_films, root)
    # scores CSVs live in the data folder, so file names match the manifests
    sources.write_scores_csv(tune_films, scored[:120], root / "tune_scores.csv")
    sources.write_scores_csv(eval_films, scored[120:], root / "eval_scores.csv")
    for name in ("tune.csv", "eval.csv"):
        (root / name).write_text((tmp_path / name).read_text())

    out = tmp_path / "independent"
    rc = main(["evaluate", str(root / "eval.csv"), "--scores", str(root / "eval_scores.csv"),
               "--choose-on", str(root / "tune.csv"), "--choose-scores", str(root / "tune_scores.csv"),
               "--n-boot", "200", "--out", str(out), "--save-thresholds", str(tmp_path / "thr.json")])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    prov = rep["thresholds"]["provenance"]
    assert prov["checked"] and prov["overlap"] == 0 and rep["warnings"] == []
    assert rep["counts"]["films"] == 120
    # the thresholds applied are exactly those fitted on the tuning films
    keep = [s.assessable for s in scored[:120]]
    expect = T.choose_thresholds([f.label for f, k in zip(tune_films, keep) if k],
                                 [s.score for s, k in zip(scored[:120], keep) if k], ["x"]).thresholds
    assert rep["thresholds"]["values"] == pytest.approx(expect)
    # the scores CSV written beside the report reads back to the same scores
    again = sources.read_scores_csv(out / "scores.csv", sources.read_manifest(root / "eval.csv"))
    assert [x.score for x in again] == [x.score for x in scored[120:]]
    assert "AUROC" in capsys.readouterr().out

    # reusing the saved thresholds on the tuning films themselves: caught by content hash
    out2 = tmp_path / "same"
    assert main(["evaluate", str(root / "tune.csv"), "--scores", str(root / "tune_scores.csv"),
                 "--thresholds", str(tmp_path / "thr.json"), "--n-boot", "100", "--out", str(out2)]) == 0
    rep2 = json.loads((out2 / "report.json").read_text())
    assert rep2["thresholds"]["provenance"]["overlap"] == 120 - sum(not k for k in keep)
    assert any(PICKED in w for w in rep2["warnings"])
    assert PICKED in capsys.readouterr().err

    out3 = tmp_path / "on_eval"
    assert main(["evaluate", str(root / "eval.csv"), "--scores", str(root / "eval_scores.csv"),
                 "--choose-on-eval", "--n-boot", "100", "--out", str(out3)]) == 0
    assert PICKED in (out3 / "report.html").read_text()


def test_cli_refuses_missing_scores_and_missing_thresholds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    films, scored, _ = _synthetic(n=40, seed=4)
    _write_manifest(tmp_path / "m.csv", films, tmp_path)
    sources.write_scores_csv(films[:-3], scored[:-3], tmp_path / "partial.csv")
    assert main(["evaluate", str(tmp_path / "m.csv"), "--scores", str(tmp_path / "partial.csv"),
                 "--choose-on-eval", "--out", str(tmp_path / "o")]) == 2
    assert "no score for 3 manifest film(s)" in capsys.readouterr().err
    sources.write_scores_csv(films, [Scored(x.score, x.decision, x.reason) for x in scored], tmp_path / "all.csv")
    assert main(["evaluate", str(tmp_path / "m.csv"), "--scores", str(tmp_path / "all.csv"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "no thresholds" in capsys.readouterr().err


def test_manifest_reading(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"same")
    (tmp_path / "b.png").write_bytes(b"same")
    (tmp_path / "m.csv").write_text("file,label,age,nodule_or_mass,nodule_size_mm\n"
                                    "a.png,abnormal,045Y,1,12\nb.png,0,,0,\n")
    a, b = sources.read_manifest(tmp_path / "m.csv")
    assert (a.label, b.label, a.age, b.age, a.nodule_or_mass) == (1, 0, 45, None, True)
    assert a.key == b.key and a.key.startswith("sha256:")      # same bytes, same film
    assert a.patient_id != b.patient_id and a.extra == {"nodule_size_mm": "12"}
    (tmp_path / "bad.csv").write_text("file,label\na.png,maybe\n")
    with pytest.raises(sources.SourceError, match="neither normal nor abnormal"):
        sources.read_manifest(tmp_path / "bad.csv")


def test_cli_paired_comparison_and_site_threshold_file(tmp_path: Path) -> None:
    from cxr_triage.inference.site_threshold import SiteThreshold, write_site_threshold

    films, scored, other = _synthetic(n=160, seed=6)
    _write_manifest(tmp_path / "m.csv", films, tmp_path)
    sources.write_scores_csv(films, scored, tmp_path / "a.csv")
    sources.write_scores_csv(films, other, tmp_path / "b.csv")
    site = SiteThreshold(site="demo", threshold=0.33, target_sensitivity=0.98, confidence=0.95,
                         ci_method="wilson", model_sha256="0" * 64, model_name="m", model_version="1")
    write_site_threshold(site, tmp_path / "site.json")
    out = tmp_path / "out"
    assert main(["evaluate", str(tmp_path / "m.csv"), "--scores", str(tmp_path / "a.csv"),
                 "--thresholds", str(tmp_path / "site.json"), "--compare-scores", str(tmp_path / "b.csv"),
                 "--compare-name", "B", "--n-boot", "200", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["thresholds"]["values"] == {site.operating_point: 0.33}
    assert rep["thresholds"]["provenance"]["source"].startswith("site threshold file site.json")
    cmp_ = rep["comparison"]
    both = [x.assessable and z.assessable for x, z in zip(scored, other)]
    y = np.array([f.label for f, k in zip(films, both) if k])
    sa = np.array([x.score for x, k in zip(scored, both) if k])
    sb = np.array([z.score for z, k in zip(other, both) if k])
    assert cmp_["n_films"] == int(sum(both)) and cmp_["model_b"] == "B"
    assert cmp_["auroc_delong"]["difference"] == pytest.approx(roc_auc_score(y, sa) - roc_auc_score(y, sb))
    assert "Paired comparison with B" in (out / "report.html").read_text()
