"""Outcomes keyed by accession number (issue 24): `reconcile` joins them to the node's studies
through the accession number each study arrived with (job store, or the result SRs' headers),
with the same figures as the same outcomes keyed by Study Instance UID."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.commission_support import as_dicom, film_pool, record_results

from cxr_triage.config import load_config
from cxr_triage.evaluation import reconcile as rc
from cxr_triage.evaluation import reconcile_keys as keys

CLI = [sys.executable, "-m", "cxr_triage.cli"]
DAY = "2026-11-23"


@pytest.fixture(scope="module")
def site(shared_data: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Eight films triaged at the median score, one study each, accession numbers RIS-0..RIS-7."""
    from cxr_triage.dicom_node.store.jobs import JobStore
    from cxr_triage.inference.pipeline import Triager

    tmp = tmp_path_factory.mktemp("accession")
    films = film_pool(shared_data)[:8]
    cfg = load_config(None, environ={}).replace(inference={"model_path": str(tiny_model), "threads": 1})
    median = float(np.median([r.score for r in Triager(cfg).triage_paths([f.path for f in films])]))
    results = Triager(cfg, threshold=median).triage_paths([f.path for f in films])
    store = JobStore(tmp / "queue.sqlite3")
    studies = record_results(store, list(results), DAY)
    for i, uid in enumerate(studies):
        store.set_identity(uid, {"accession_number": f"RIS-{i}", "patient_id": f"P{i}", "patient_name": ""})
    store.close()
    return {"tmp": tmp, "films": films, "studies": studies, "store": tmp / "queue.sqlite3"}


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


def run_reconcile(*args: str) -> dict:
    out = Path(args[args.index("--out") + 1])
    proc = subprocess.run([*CLI, "reconcile", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


def test_outcomes_by_accession_match_outcomes_by_study_uid(site: dict) -> None:
    tmp, films = site["tmp"], site["films"]
    labels = ["abnormal" if f.label else "normal" for f in films]
    by_acc = write_csv(tmp / "ris.csv", ["acc_no", "label"],
                       [[f"RIS-{i}", y] for i, y in enumerate(labels)] + [["RIS-404", "abnormal"]])
    by_uid = write_csv(tmp / "uids.csv", ["study_instance_uid", "label"],
                       [[u, y] for u, y in zip(site["studies"], labels)] + [["1.2.3.404", "abnormal"]])
    disc = tmp / "discordant.csv"
    got = run_reconcile("--outcomes", str(by_acc), "--accession-column", "acc_no", "--store", str(site["store"]),
                        "--out", str(tmp / "a.json"), "--discordant", str(disc))
    want = run_reconcile("--outcomes", str(by_uid), "--store", str(site["store"]), "--out", str(tmp / "u.json"))
    assert (got["n_outcomes"], got["n_matched"], got["n_outcomes_without_result"]) == (9, 8, 1)
    assert got["figures"] == want["figures"] and got["level"] == "study"
    rows = list(csv.DictReader(disc.open()))
    assert rows and all(r["accession_number"].startswith("RIS-") for r in rows)
    assert {r["study_instance_uid"] for r in rows} <= set(site["studies"])


def test_accession_numbers_from_result_srs(site: dict, tiny_model: Path) -> None:
    from cxr_triage.contract.result import aggregate_study
    from cxr_triage.dicom_node.results.sr import build_result_sr
    from cxr_triage.inference.pipeline import Triager

    triager = Triager(load_config(None, environ={}).replace(inference={"model_path": str(tiny_model), "threads": 1}))
    srs = site["tmp"] / "srs"
    srs.mkdir()
    ds = as_dicom(site["films"][0])
    ds.AccessionNumber = "RIS-SR-1"
    agg = aggregate_study(ds.StudyInstanceUID, [triager.triage_dataset(ds, str(site["films"][0].path))])
    build_result_sr(agg, [ds], triager.meta).save_as(srs / "sr.dcm")
    (srs / "notes.txt").write_text("not DICOM")
    assert keys.accessions_from_srs(srs) == {"RIS-SR-1": [ds.StudyInstanceUID]}
    outcomes = {"RIS-SR-1": rc.Outcome("RIS-SR-1", 1), "RIS-none": rc.Outcome("RIS-none", 0)}
    rekeyed = keys.by_study_uid(outcomes, keys.accessions_from_srs(srs))
    assert set(rekeyed) == {ds.StudyInstanceUID, "accession:RIS-none"}
    rec = rc.reconcile("study_instance_uid", rekeyed, rc.live_from_srs(srs))
    assert (rec.n_matched, rec.n_outcomes_without_result) == (1, 1)


def test_missing_key_column_names_the_option(tmp_path: Path) -> None:
    bad = write_csv(tmp_path / "bad.csv", ["acc_no", "label"], [["1", "normal"]])
    with pytest.raises(ValueError, match="--accession-column"):
        rc.read_outcomes(bad)
    key, outcomes = rc.read_outcomes(bad, "acc_no")
    assert key == "accession_number" and outcomes["1"].row["accession_number"] == "1"


def test_site_label_column_and_spellings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 24 re-run: outcomes `Accession,Result` were refused; --accession-column,
    --label-column and the manifest's --abnormal-values/--normal-values read them."""
    from cxr_triage.cli import main as cli_main

    path = write_csv(tmp_path / "outcomes.csv", ["Accession", "Result"],
                     [["A1", "Finding"], ["A2", "No Finding"]])
    with pytest.raises(ValueError, match=r"no label column 'label' \(--label-column.*--accession-column"):
        rc.read_outcomes(path)
    # issue 24 re-run 2: the error names the options that read a site's spellings, as manifest's hint does
    with pytest.raises(ValueError, match=r"outcomes\.csv:2: label 'Finding' is neither normal nor abnormal; "
                                         r"give the site's spellings with --abnormal-values / --normal-values"):
        rc.read_outcomes(path, "Accession", "Result")
    key, outcomes = rc.read_outcomes(path, "Accession", "Result", ["Finding"], ["No Finding"])
    assert key == "accession_number" and {k: o.label for k, o in outcomes.items()} == {"A1": 1, "A2": 0}

    assert cli_main(["reconcile", "--outcomes", str(path), "--srs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cxr-triage reconcile: ") and "--label-column" in err and "Traceback" not in err
