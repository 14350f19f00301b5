"""The ML engineer's loop, end to end, through the command line only (issue 17).

A site's own folder (real shared films copied into a tmp folder, with a labels CSV in the
site's own column names and label spellings) -> ``cxr-triage manifest`` -> ``train`` (tiny
network, 64 px, a time budget) -> ``export`` (named) -> ``report`` (compared with the bundled
model) -> ``manifest`` + ``commission`` on separate commissioning films -> ``wrap`` one film ->
``serve --model --site-threshold`` on a free port -> dcmtk ``storescu`` -> the result SR in
the outbox names the new model and carries the site operating point.

Every step is a subprocess of the installed ``cxr-triage`` script; the test only prepares the
folders and reads the files the commands write. About 1-3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).parent / "cxr-triage")
STORESCU = Path("/usr/bin/storescu")
TIMINGS: dict[str, float] = {}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_TRIAGE__")}
    env.pop("CXR_TRIAGE_CONFIG", None)
    env.update(OMP_NUM_THREADS="1", CXR_TRIAGE__LOGGING__FORMAT="json", CXR_TRIAGE__INFERENCE__THREADS="1")
    return env


def cli(step: str, *args: str, cwd: Path, ok: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    proc = subprocess.run([CLI, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    TIMINGS[step] = round(time.monotonic() - t0, 1)
    if ok:
        assert proc.returncode == 0, f"{step}: rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, f"{step}: traceback\n{proc.stderr[-3000:]}"
    return proc


def _adults(shared: Path, folder: str) -> list[dict[str, str]]:
    rows = list(csv.DictReader((shared / folder / "labels.csv").open()))
    return [r for r in rows if r.get("age") and float(r["age"]) >= 16]


def _site_folder(dst: Path, rows: list[dict[str, str]], src: Path) -> None:
    """The site's layout: films under xrays/, labels in the site's own column names/spellings."""
    (dst / "xrays").mkdir(parents=True)
    with (dst / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "report_class", "mrn", "age_years", "gender", "projection"])
        for r in rows:
            name = Path(r["file"]).name
            shutil.copyfile(src / r["file"], dst / "xrays" / name)
            w.writerow([f"xrays/{name}", "ABN" if r["label"] == "abnormal" else "NORM", f"p{r['patient_id']}",
                        r["age"], r["sex"], r["view"]])
        w.writerow(["xrays/lost_film.png", "ABN", "p999999", "50", "M", "PA"])  # listed, not there


@pytest.mark.skipif(not STORESCU.exists(), reason="dcmtk storescu not installed")
def test_folder_to_commissioned_model_served(shared_data: Path, tmp_path: Path) -> None:
    nih = shared_data / "nih-cxr14"
    adults = _adults(shared_data, "nih-cxr14")
    normal = [r for r in adults if r["label"] == "normal"]
    abnormal = [r for r in adults if r["label"] == "abnormal"]
    _site_folder(tmp_path / "site", normal[:18] + abnormal[:18], nih)
    site_cols = ["--file-column", "image", "--label-column", "report_class", "--patient-column", "mrn",
                 "--age-column", "age_years", "--sex-column", "gender", "--view-column", "projection",
                 "--abnormal-values", "ABN", "--normal-values", "NORM"]

    # 1. folder + labels CSV -> manifest; the missing film is reported, not skipped silently
    p = cli("manifest", "manifest", "--dataset", "folder", "--root", "site", "--source", "site1",
            "--out", "site1.csv", *site_cols, cwd=tmp_path)
    summary = json.loads(p.stdout)
    assert summary["films"] == 36 and summary["by_source"] == {"site1": {"films": 36, "normal": 18, "abnormal": 18}}
    assert "lost_film.png" in p.stderr and summary["left_out"]["film(s) not found"]["count"] == 1

    # 2. train: tiny network, 64 px, a time budget; split per source printed, ETA per epoch
    p = cli("train", "train", "--manifest", "site1.csv", "--out", "runs/site1", "--architecture", "tiny",
            "--no-pretrained", "--image-size", "64", "--harmonise-size", "64", "--epochs", "3", "--batch-size", "8",
            "--lr", "0.01", "--max-minutes", "2", "--threads", "1", "--no-progress", cwd=tmp_path)
    assert re.search(r"site1\s+train\s+\d+\s+\d+", p.stderr) and "ETA" in p.stderr
    run = tmp_path / "runs" / "site1"
    result = json.loads(p.stdout)
    assert result["epochs_run"] >= 1 and (run / "test_report.json").exists() and (run / "test_report.html").exists()
    assert json.loads((run / "train_summary.json").read_text())["runs"][0]["epochs"][0] == 1

    # 3. export the best checkpoint under the site's own name and version
    onnx_path = tmp_path / "models" / "site1.onnx"
    cli("export", "export", "--checkpoint", str(run / "best.pt"), "--out", str(onnx_path),
        "--name", "site1-cxr", "--version", "0.1-e2e", cwd=tmp_path)
    assert onnx_path.exists()

    # 4. the test report on the site's own films, compared with the bundled model
    p = cli("report", "report", "--model", str(onnx_path), "--manifest", str(run / "split.csv"),
            "--compare", str(Path(__file__).resolve().parents[2] / "model" / "cxr_triage_effnet_lite0.onnx"),
            "--out", "reports/site1", "--n-boot", "200", cwd=tmp_path)
    rep = json.loads((tmp_path / "reports" / "site1" / "test_report.json").read_text())
    assert rep["headline_sources"] == ["site1"] and rep["model"] == "site1-cxr 0.1-e2e"
    assert set(rep["by_view"]) <= {"PA", "AP"} and rep["by_view"]
    assert rep["comparison"]["headline"] is None or "paired_bootstrap_ci95" in rep["comparison"]["headline"]
    assert "paired comparison with cxr-triage-effnet-lite0" in p.stdout

    # 5. commission on the site's separate commissioning films (target lowered: 22 abnormal films
    #    cannot show a 98% lower bound; the rule and its evidence are the same)
    _site_folder(tmp_path / "commissioning", normal[18:30] + abnormal[18:40], nih)
    cli("manifest commissioning", "manifest", "--dataset", "folder", "--root", "commissioning", "--source", "site1",
        "--out", "commissioning.csv", *site_cols, cwd=tmp_path)
    site_file = tmp_path / "models" / "site1_threshold.json"
    p = cli("commission", "commission", "--manifest", "commissioning.csv", "--model", str(onnx_path),
            "--site", "site1", "--target", "0.8", "--out", str(site_file), cwd=tmp_path)
    assert site_file.exists() and "serve --model" in p.stdout
    assert '"level": "INFO"' not in p.stderr  # quiet by default

    # 6. wrap one film into DICOM, serve the new model with its site threshold, send the film
    cli("wrap", "wrap", str(tmp_path / "commissioning" / "xrays" / Path(abnormal[18]["file"]).name), "--out", "dicom",
        "--sop-class", "DX", "--transfer-syntax", "JPEG2000Lossless", "--age", "60", cwd=tmp_path)
    film = next((tmp_path / "dicom").glob("*.dcm"))
    log_path = tmp_path / "serve.log"
    env = dict(_env(), CXR_TRIAGE__WEB__ENABLED="false", CXR_TRIAGE__NODE__HOST="127.0.0.1",
               CXR_TRIAGE__NODE__QUIET_PERIOD_S="1", CXR_TRIAGE__DELIVERY__SUMMARY_IMAGE="true")
    t0 = time.monotonic()
    with log_path.open("wb") as log:
        node = subprocess.Popen([CLI, "serve", "--model", str(onnx_path), "--site-threshold", str(site_file),
                                 "--port", "0", "--state-dir", str(tmp_path / "var")],
                                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        port = _wait_for_port(log_path, node)
        send = subprocess.run([str(STORESCU), "-xv", "-aec", "CXRTRIAGE", "127.0.0.1", str(port), str(film)],
                              capture_output=True, text=True, timeout=60)
        assert send.returncode == 0, send.stderr
        srs = _wait_for_sr(tmp_path / "var" / "outbox", node, log_path)
    finally:
        node.terminate()
        node.wait(30)
    TIMINGS["serve + send + SR"] = round(time.monotonic() - t0, 1)

    # 7. the SR names the new model (Software Versions, IHE contributing equipment) and its site point
    sr = dcmread(srs[0])
    assert "site1-cxr 0.1-e2e" in list(sr.SoftwareVersions)
    algo = [e for e in sr.ContributingEquipmentSequence if e.get("ManufacturerModelName") == "site1-cxr"]
    assert algo and algo[0].SoftwareVersions == "0.1-e2e"
    from cxr_triage.dicom_node.results.sr_reader import read_result_sr

    parsed = read_result_sr(sr)
    assert (parsed.model_name, parsed.model_version) == ("site1-cxr", "0.1-e2e")
    assert parsed.operating_point == "site:site1:sens_0.8_lb95"
    print("ML loop timings (s):", json.dumps(TIMINGS))


def _wait_for_port(log_path: Path, node: subprocess.Popen, timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r'"msg": "node listening".*?"port": (\d+)', log_path.read_text(errors="replace"))
        if m:
            return int(m.group(1))
        assert node.poll() is None, f"serve exited {node.returncode}:\n{log_path.read_text()[-3000:]}"
        time.sleep(0.3)
    raise TimeoutError(f"the node did not start:\n{log_path.read_text()[-3000:]}")


def _wait_for_sr(outbox: Path, node: subprocess.Popen, log_path: Path, timeout: float = 90) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        srs = [p for p in outbox.rglob("*.dcm") if dcmread(p, stop_before_pixels=True).Modality == "SR"] \
            if outbox.exists() else []
        if srs:
            return srs
        assert node.poll() is None, f"serve exited {node.returncode}:\n{log_path.read_text()[-3000:]}"
        time.sleep(0.5)
    raise TimeoutError(f"no result SR in {outbox}:\n{log_path.read_text()[-3000:]}")
