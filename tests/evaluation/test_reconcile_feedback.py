"""Radiologists' worklist feedback as reconciliation outcomes: the read each assessment implies,
the rejections exported as discordant cases (with who, when, model version and threshold) for
retraining, through ``cxr-triage reconcile --feedback``."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.commission_support import record_results

from cxr_triage.contract.result import Decision, FilmResult
from cxr_triage.dicom_node.store.jobs import JobStore
from cxr_triage.dicom_node.store.queries import StudyQueries
from cxr_triage.evaluation import reconcile as rc

CLI = [sys.executable, "-m", "cxr_triage.cli"]
DAY = "2026-11-22"


@pytest.mark.parametrize("verdict, decision, finding, label", [
    ("accept", "suspicious", None, 1), ("reject", "suspicious", None, 0),
    ("accept", "likely_normal", None, 0), ("reject", "likely_normal", None, 1),
    ("reject", "likely_normal", "nodule_mass", 1), ("reject", "suspicious", "normal", 0),
    ("accept", "suspicious", "consolidation", 1), ("reject", "not_assessable", None, None),
    ("reject", "not_assessable", "effusion", 1), ("accept", "not_assessable", "normal", 0),
])
def test_the_read_an_assessment_implies(verdict, decision, finding, label):
    assert rc.feedback_label(verdict, decision, finding) == label


def _film(decision: Decision, score: float | None, source: Path) -> FilmResult:
    return FilmResult(decision, source=str(source), score=score, threshold=0.5,
                      operating_point="sens_0.98", model_name="m", model_version="1.4")


def test_reconcile_exports_rejected_results_as_discordant_cases(tmp_path: Path) -> None:
    films = []
    for i, (decision, score) in enumerate([(Decision.SUSPICIOUS, 0.9), (Decision.LIKELY_NORMAL, 0.1),
                                           (Decision.SUSPICIOUS, 0.8), (Decision.LIKELY_NORMAL, 0.2)]):
        source = tmp_path / f"film{i}.dcm"
        source.write_bytes(b"x")
        films.append(_film(decision, score, source))
    db = tmp_path / "queue.sqlite3"
    store = JobStore(db)
    uids = record_results(store, films, DAY)
    queries = StudyQueries(store)
    rid = {u: queries.current_result_id(u) for u in uids}
    store.add_feedback(uids[0], rid[uids[0]], "reject", "dr.a", finding="normal", decision="suspicious",
                       score=0.9, model_version="1.4", threshold=0.5, now=1000.0)
    store.add_feedback(uids[1], rid[uids[1]], "reject", "dr.b", finding="nodule_mass",
                       decision="likely_normal", score=0.1, model_version="1.4", threshold=0.5, now=1001.0)
    store.add_feedback(uids[2], rid[uids[2]], "accept", "dr.a", decision="suspicious", score=0.8,
                       model_version="1.4", threshold=0.5, now=1002.0)
    # a later change of mind replaces the earlier read of the same study
    store.add_feedback(uids[3], rid[uids[3]], "reject", "dr.c", decision="likely_normal", now=1003.0)
    store.add_feedback(uids[3], rid[uids[3]], "accept", "dr.c", decision="likely_normal", score=0.2,
                       model_version="1.4", threshold=0.5, now=1004.0)
    store.close()

    outcomes = rc.feedback_from_store(StudyQueries(JobStore(db)))
    assert {u: o.label for u, o in outcomes.items()} == {uids[0]: 0, uids[1]: 1, uids[2]: 1, uids[3]: 0}

    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_TRIAGE")}
    disc = tmp_path / "discordant.csv"
    proc = subprocess.run([*CLI, "reconcile", "--feedback", "--store", str(db), "--discordant", str(disc)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "radiologist feedback: 4 studies" in proc.stdout
    rows = {r["study_instance_uid"]: r for r in csv.DictReader(disc.open())}
    assert set(rows) == {uids[0], uids[1]}                      # the two rejections
    a, b = rows[uids[0]], rows[uids[1]]
    assert (a["label"], a["discordance"], a["reviewer"], a["verdict"], a["finding_seen"]) == (
        "normal", "false_suspicious", "dr.a", "reject", "normal")
    assert (b["label"], b["discordance"], b["reviewer"], b["finding_seen"]) == (
        "abnormal", "missed_abnormal", "dr.b", "nodule_mass")
    assert a["model_version"] == "1.4" and float(a["threshold"]) == 0.5
    assert a["reviewed_at"].startswith("1970-01-01T00:16:40") and Path(a["file"]).is_file()

    # a CSV read wins over the worklist feedback of the same study
    csv_path = tmp_path / "outcomes.csv"
    csv_path.write_text(f"study_instance_uid,label\n{uids[0]},abnormal\n")
    proc = subprocess.run([*CLI, "reconcile", "--feedback", "--outcomes", str(csv_path), "--store", str(db),
                           "--discordant", str(disc)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert {r["study_instance_uid"] for r in csv.DictReader(disc.open())} == {uids[1]}
    # neither outcomes nor feedback: a clear error
    proc = subprocess.run([*CLI, "reconcile", "--store", str(db)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "--outcomes" in proc.stderr
