"""Reconciliation on real films: live results (node job store, or result SRs) joined with
radiologist outcomes give the same counts as a direct recount, with Wilson CIs from the
evaluation harness, and the discordant films come out as a manifest ready for retraining."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.commission_support import as_dicom, film_pool, record_results

from cxr_triage.config import load_config
from cxr_triage.evaluation import metrics
from cxr_triage.evaluation import reconcile as rc
from cxr_triage.evaluation.drift import make_baseline, write_baseline
from cxr_triage.evaluation.sources import read_manifest

CLI = [sys.executable, "-m", "cxr_triage.cli"]
DAY = "2026-11-22"


@pytest.fixture(scope="module")
def live(shared_data: Path, model_path: Path) -> dict:
    """120 adult films (random, mixed) triaged at the median score, so both kinds of
    discordance occur whatever the model."""
    from cxr_triage.inference.pipeline import Triager

    pool = film_pool(shared_data)
    rng = np.random.default_rng(11)
    films = [pool[i] for i in rng.permutation(len(pool))[:120]]
    cfg = load_config(None, environ={}).replace(inference={"model_path": str(model_path), "threads": 1})
    probe = Triager(cfg).triage_paths([f.path for f in films])
    median = float(np.median([r.score for r in probe]))
    triager = Triager(cfg, threshold=median, operating_point="test-median")
    return {"films": films, "results": triager.triage_paths([f.path for f in films]), "triager": triager}


def _recount(labels: list[int], decisions: list[str]) -> dict[str, int]:
    pairs = list(zip(labels, decisions))
    return {"tp": sum(y == 1 and d == "suspicious" for y, d in pairs),
            "fn": sum(y == 1 and d == "likely_normal" for y, d in pairs),
            "tn": sum(y == 0 and d == "likely_normal" for y, d in pairs),
            "fp": sum(y == 0 and d == "suspicious" for y, d in pairs)}


def test_reconcile_from_the_node_store_via_cli(live: dict, tmp_path: Path) -> None:
    from cxr_triage.dicom_node.store.jobs import JobStore

    store_path = tmp_path / "var" / "queue.sqlite3"
    store = JobStore(store_path)
    studies = record_results(store, list(live["results"]), DAY)
    store.close()
    labels = [f.label for f in live["films"]]
    outcomes = tmp_path / "outcomes.csv"
    with outcomes.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["study_instance_uid", "label", "findings"])
        for uid, f in zip(studies[:100], live["films"][:100]):  # 20 results still unread
            w.writerow([uid, "abnormal" if f.label else "normal", f.findings])
        w.writerow(["1.2.3.4.5.6.7.8.9", "abnormal", "Mass"])     # read, but never reached the node
    baseline = write_baseline(make_baseline([r.score for r in live["results"]],
                                            [r.decision.value for r in live["results"]]), tmp_path / "base.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_TRIAGE")}
    env["CXR_TRIAGE__MONITORING__BASELINE_FILE"] = str(baseline)
    out, disc = tmp_path / "report.json", tmp_path / "discordant.csv"
    proc = subprocess.run([*CLI, "reconcile", "--outcomes", str(outcomes), "--store", str(store_path),
                           "--since", DAY, "--until", DAY, "--out", str(out), "--discordant", str(disc)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"drift {DAY}: 120 films" in proc.stdout

    report = json.loads(out.read_text())
    assert report["level"] == "study"
    assert (report["n_outcomes"], report["n_matched"]) == (101, 100)
    assert report["n_outcomes_without_result"] == 1 and report["n_results_without_outcome"] == 20
    expect = _recount(labels[:100], [r.decision.value for r in live["results"][:100]])
    fig = report["figures"]
    assert {k: fig[k] for k in expect} == expect
    sens = metrics.proportion(expect["tp"], expect["tp"] + expect["fn"])
    assert fig["sensitivity"]["low"] == pytest.approx(sens.low)
    assert fig["workload_all"]["k"] == expect["tn"] + expect["fn"]
    assert report["operating_points"] == ["test-median"]
    assert len(report["drift"]) == 1 and report["drift"][0]["period"] == DAY

    # the discordant films: a manifest the training/evaluation readers accept, real files
    films = read_manifest(disc, hash_files=False)
    assert len(films) == expect["fn"] + expect["fp"] > 0
    # read_manifest resolves each file (links, e.g. ../shared, followed) and the pool's paths are
    # as built from shared_data: compare both sides resolved.
    by_path = {f.path.resolve(): f for f in live["films"]}
    for f in films:
        assert f.path.is_file() and by_path[f.path.resolve()].label == f.label
    from cxr_triage.training.manifest import read_manifest as read_training_manifest

    assert [e.label for e in read_training_manifest(disc)] == [f.label for f in films]
    kinds = [row["discordance"] for row in csv.DictReader(disc.open())]
    assert kinds.count("missed_abnormal") == expect["fn"] and kinds.count("false_suspicious") == expect["fp"]


def test_reconcile_from_result_srs_by_study_and_by_film(live: dict, tmp_path: Path) -> None:
    """Studies of two films each, wrapped as DICOM, triaged, reported as the node's SR; the
    outcomes by study and by film are reconciled from the SR files alone."""
    from pydicom.uid import generate_uid

    from cxr_triage.contract.result import aggregate_study
    from cxr_triage.dicom_node.results.sr import build_result_sr

    triager = live["triager"]
    films = live["films"][:24]
    srs = tmp_path / "srs"
    srs.mkdir()
    study_rows, film_rows, study_truth, film_truth = [], [], [], []
    for a, b in zip(films[0::2], films[1::2]):
        study = generate_uid()
        dss = [as_dicom(f) for f in (a, b)]
        for ds in dss:
            ds.StudyInstanceUID = study
        results = [triager.triage_dataset(ds, str(f.path)) for ds, f in zip(dss, (a, b))]
        agg = aggregate_study(study, results)
        build_result_sr(agg, dss, triager.meta).save_as(srs / f"{study}.dcm")
        label = max(a.label, b.label)
        study_rows.append([study, "abnormal" if label else "normal"])
        study_truth.append((label, agg.decision.value))
        for ds, f, r in zip(dss, (a, b), results):
            film_rows.append([ds.SOPInstanceUID, "abnormal" if f.label else "normal", str(f.path)])
            film_truth.append((f.label, r.decision.value))

    by_study, by_film = tmp_path / "by_study.csv", tmp_path / "by_film.csv"
    with by_study.open("w", newline="") as fh:
        csv.writer(fh).writerows([["study_instance_uid", "label"], *study_rows])
    with by_film.open("w", newline="") as fh:
        csv.writer(fh).writerows([["sop_instance_uid", "label", "file"], *film_rows])
    live_srs = rc.live_from_srs(srs)

    for path, truth, level in ((by_study, study_truth, "study"), (by_film, film_truth, "film")):
        key, outcomes = rc.read_outcomes(path)
        rec = rc.reconcile(key, outcomes, live_srs)
        assert rec.level == level and rec.n_matched == len(truth)
        expect = _recount([t[0] for t in truth], [t[1] for t in truth])
        assert {k: rec.figures[k] for k in expect} == expect
        if level == "film":  # the outcome's own file column goes into the manifest
            assert all(Path(d["file"]).is_file() for d in rec.discordant)
            assert len(rec.discordant) == expect["fn"] + expect["fp"]


def test_outcomes_csv_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("accession,label\n1,normal\n")
    with pytest.raises(ValueError, match="study_instance_uid or sop_instance_uid"):
        rc.read_outcomes(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("study_instance_uid,label\n1.2,normal\n1.2,abnormal\n")
    with pytest.raises(ValueError, match="listed twice"):
        rc.read_outcomes(dup)
    odd = tmp_path / "odd.csv"
    odd.write_text("study_instance_uid,label\n1.2,maybe\n")
    with pytest.raises(ValueError, match="neither normal nor abnormal"):
        rc.read_outcomes(odd)
