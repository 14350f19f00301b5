"""The training commands as a user meets them: a site's folder or DICOM files into a manifest
(nothing skipped silently, one-line errors), train's help and budget, resume history, every
checkpoint exportable, the report command with a paired comparison, and `wrap`."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_triage.cli import main as cli_main

SIZE = 64


def _film(path: Path, rng: np.random.Generator, abnormal: bool) -> None:
    img = rng.normal(110, 20, (SIZE + 16, SIZE)).clip(0, 255)
    if abnormal:
        cy, cx = rng.integers(20, SIZE - 20, 2)
        yy, xx = np.mgrid[: SIZE + 16, :SIZE]
        img += 90 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)


def _csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site folder: pics/*.png, labels in the site's own names and spellings, plus problems."""
    root = tmp_path_factory.mktemp("site")
    rng = np.random.default_rng(0)
    rows: list[list[object]] = []
    for i in range(48):
        ab = i % 2 == 0
        _film(root / "pics" / f"f{i:03d}.png", rng, ab)
        rows.append([f"pics/f{i:03d}.png", "POS" if ab else "NEG", f"m{i}", 30 + i, "FM"[i % 2], "PA" if i % 3 else "AP"])
    rows.append(["pics/gone.png", "POS", "m90", 50, "F", "PA"])            # listed, not there
    rows.append(["pics/f000.png", "POS", "m0", 30, "F", "PA"])             # duplicate
    _film(root / "pics" / "lat.png", rng, False)
    rows.append(["pics/lat.png", "NEG", "m91", 40, "M", "LL"])             # lateral
    _film(root / "pics" / "odd.png", rng, False)
    rows.append(["pics/odd.png", "perhaps", "m92", 40, "M", "PA"])        # unreadable label
    (root / "pics" / "broken.png").write_bytes(b"not a png")
    rows.append(["pics/broken.png", "NEG", "m93", 40, "M", "PA"])          # unreadable film
    _film(root / "pics" / "stray.png", rng, True)                          # no row
    _csv(root / "labels.csv", ["img", "result", "mrn", "years", "gender", "proj"], rows)
    return root


SITE_COLS = ["--file-column", "img", "--label-column", "result", "--patient-column", "mrn", "--age-column", "years",
             "--sex-column", "gender", "--view-column", "proj", "--abnormal-values", "POS", "--normal-values", "NEG"]


@pytest.fixture(scope="module")
def site_manifest(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("m") / "site.csv"
    assert cli_main(["manifest", "--dataset", "folder", "--root", str(site), "--out", str(out), "--source", "site",
                     *SITE_COLS]) == 0
    return out


def test_folder_manifest_reports_every_left_out_row(site: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "elsewhere" / "m.csv"
    rc = cli_main(["manifest", "--dataset", "folder", "--root", str(site), "--out", str(out), "--source", "st-x",
                   *SITE_COLS])
    cap = capsys.readouterr()
    assert rc == 0
    summary = json.loads(cap.out)
    assert summary["films"] == 48 and summary["by_source"]["st-x"] == {"films": 48, "normal": 24, "abnormal": 24}
    left = summary["left_out"]
    assert left["film(s) not found"]["examples"] == ["pics/gone.png"]
    assert left["duplicate row(s), first kept"]["count"] == 1
    assert left["lateral or other non-frontal film(s), left out"]["count"] == 1
    assert left["row(s) with an unreadable label"]["count"] == 1
    assert left["film(s) not readable as PNG/JPEG"]["examples"] == ["pics/broken.png"]
    assert "pics/stray.png" in left["film(s) in the folder without a row in the labels CSV, not read"]["examples"]
    assert cap.err.count("cxr-triage manifest: left out") == 6 and "Traceback" not in cap.err
    rows = list(csv.DictReader(out.open()))
    assert all((out.parent / r["file"]).is_file() for r in rows)  # relative to the manifest's folder
    first = rows[0]
    assert (first["patient_id"], first["age"], first["sex"], first["view"], first["source"]) == ("m0", "30", "F", "AP", "st-x")
    assert cli_main(["manifest", "--dataset", "folder", "--root", str(site), "--out", str(out), "--strict",
                     *SITE_COLS]) == 3


def test_dicom_folder_by_accession_number(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom, write_dicom

    rng = np.random.default_rng(1)
    png = tmp_path / "src.png"
    _film(png, rng, True)
    root = tmp_path / "pacs"
    for acc, view, pid in (("A1", "PA", "SECRET-1"), ("A2", "AP", "SECRET-2"), ("A3", "LL", "SECRET-3"),
                           ("A9", "PA", "SECRET-9")):
        write_dicom(png_to_dicom(png, accession_number=acc, view_position=view, patient_id=pid, patient_age="052Y",
                                 patient_sex="F"), root / "study" / f"{acc}.dcm")
    (root / "readme.txt").write_text("not a film")
    labels = _csv(tmp_path / "reads.csv", ["accession", "outcome"], [["A1", "abnormal"], ["A2", "normal"],
                                                                      ["A3", "normal"], ["A7", "normal"]])
    out = tmp_path / "dicom.csv"
    assert cli_main(["manifest", "--dataset", "dicom", "--root", str(root), "--labels", str(labels),
                     "--key-column", "accession", "--label-column", "outcome", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    rows = list(csv.DictReader(out.open()))
    assert [(r["label"], r["view"], r["age"], r["sex"]) for r in rows] == [("abnormal", "PA", "52", "F"),
                                                                          ("normal", "AP", "52", "F")]
    assert all(r["patient_id"].startswith("pid-") and "SECRET" not in r["patient_id"] for r in rows)
    assert "SECRET" not in cap.out + cap.err
    left = json.loads(cap.out)["left_out"]
    assert left["lateral or other non-frontal film(s), left out"]["count"] == 1
    assert left["DICOM film(s) whose accession_number has no row in the labels CSV, not read"]["count"] == 1
    assert left["row(s) whose accession_number matches no DICOM film"]["count"] == 1


def test_manifest_failures_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "films").mkdir()
    _film(tmp_path / "films" / "a.png", np.random.default_rng(2), False)
    cases = [
        (["--dataset", "nih", "--root", str(tmp_path / "films")], "Data_Entry"),
        (["--dataset", "chexpert", "--root", str(tmp_path / "films")], "CheXpert"),
        (["--dataset", "vindr", "--root", str(tmp_path / "films")], "image_labels_train"),
        (["--dataset", "folder", "--root", str(tmp_path / "films")], "labels CSV not found"),
        (["--dataset", "folder", "--root", str(tmp_path / "nowhere")], "no such folder"),
        (["--dataset", "shared", "--root", str(tmp_path / "films")], "not the shared data folder"),
    ]
    _csv(tmp_path / "bad.csv", ["path", "y"], [["a.png", "normal"]])
    cases.append((["--dataset", "folder", "--root", str(tmp_path / "films"), "--labels", str(tmp_path / "bad.csv")],
                  "--file-column"))
    for args, words in cases:
        rc = cli_main(["manifest", *args, "--out", str(tmp_path / "m.csv")])
        err = capsys.readouterr().err
        assert rc == 2, args
        assert words in err and err.count("\n") == 1 and "Traceback" not in err, (args, err)


def test_shared_layout_reports_unknown_sub_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(3)
    for folder in ("nih-cxr14", "nih-extra"):
        rows = []
        for i in range(4):
            _film(tmp_path / folder / "images" / f"{i}.png", rng, bool(i % 2))
            rows.append([f"images/{i}.png", "abnormal" if i % 2 else "normal", "", 100 + i, 40, "M", "PA"])
        _csv(tmp_path / folder / "labels.csv", ["file", "label", "findings", "patient_id", "age", "sex", "view"], rows)
    (tmp_path / "rsna-pneumonia").mkdir()
    (tmp_path / "site-films").mkdir()
    assert cli_main(["manifest", "--dataset", "shared", "--root", str(tmp_path), "--out", str(tmp_path / "m.csv")]) == 0
    err = capsys.readouterr().err
    assert "site-films" in err and "--dataset folder" in err
    assert "without labels.csv, not read: rsna-pneumonia" in err


def _train(manifest: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--manifest", str(manifest), "--out", str(out), "--architecture", "tiny", "--no-pretrained",
            "--image-size", str(SIZE), "--harmonise-size", str(SIZE), "--batch-size", "8", "--lr", "0.01",
            "--threads", "1", "--no-progress", *extra]


def test_train_help_shows_help_and_default_for_every_option() -> None:
    from cxr_triage.training.cli import register

    sub = argparse.ArgumentParser().add_subparsers()
    register(sub, "train", "train")
    parser = sub.choices["train"]
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, action.dest
        if action.nargs != 0 and action.dest not in ("manifest", "out"):
            assert "default" in action.help or action.default is not None, action.dest
    assert "(default: [training] epochs, 12)" in text and "--max-minutes" in text and "--resume" in text
    assert "(default: 0.001)" in text  # --lr, from ArgumentDefaultsHelpFormatter


def test_training_config_section_sets_the_defaults() -> None:
    from cxr_triage.config import load_config
    from cxr_triage.training.cli import config_from_args, register

    sub = argparse.ArgumentParser().add_subparsers()
    register(sub, "train", "train")
    args = sub.choices["train"].parse_args(["--manifest", "m.csv", "--out", "o", "--batch-size", "4"])
    cfg = load_config(None, environ={"CXR_TRIAGE__TRAINING__EPOCHS": "3", "CXR_TRIAGE__TRAINING__MAX_MINUTES": "1.5"})
    tc = config_from_args(args, cfg)
    assert (tc.epochs, tc.max_minutes, tc.batch_size, tc.architecture) == (3, 1.5, 4, "effnet_lite0")


@pytest.mark.parametrize(("given", "frozen"), [([], 6), (["--architecture", "effnet_lite1"], 8),
                                              (["--architecture", "effnet_lite2", "--freeze-blocks", "0"], 0),
                                              (["--architecture", "densenet121"], 0)])
def test_each_effnet_lite_freezes_the_same_stages_unless_told(given: list[str], frozen: int) -> None:
    """``cxr-triage train`` freezes what ``make train`` does for each EfficientNet-Lite (issue 22
    round 4 re-run: Lite1 kept Lite0's 6 blocks); ``--freeze-blocks`` wins."""
    from cxr_triage.config import load_config
    from cxr_triage.training.cli import config_from_args, register

    sub = argparse.ArgumentParser().add_subparsers()
    register(sub, "train", "train")
    args = sub.choices["train"].parse_args(["--manifest", "m.csv", "--out", "o", *given])
    assert config_from_args(args, load_config(None, environ={})).freeze_blocks == frozen


def test_a_last_epoch_the_budget_cut_short_is_stopped_by_the_budget(site_manifest: Path, tmp_path: Path) -> None:
    """Issue 22 round 4 re-run: ``--epochs 1 --max-minutes`` said ``stopped_by: epochs`` when the
    budget had cut the one epoch's batches short."""
    run = tmp_path / "run"
    assert cli_main(_train(site_manifest, run, "--epochs", "1", "--max-minutes", "0.0001", "--no-test-report")) == 0
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["stopped_by"] == "time budget" and summary["epochs_run"] == 1


def test_budget_resume_history_and_every_checkpoint_exports(site_manifest: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert cli_main(_train(site_manifest, run, "--epochs", "4", "--max-minutes", "0.0001")) == 0
    cap = capsys.readouterr()
    assert "site" in cap.err and "patients" in cap.err and "ETA" in cap.err
    first = json.loads((run / "train_summary.json").read_text())
    assert first["stopped_by"] == "time budget" and first["epochs_run"] == 1 and len(first["runs"]) == 1
    assert (run / "test_report.json").exists() and (run / "test_report.html").exists()
    # resume: the recipe is the saved one, --epochs changes, the summary appends
    assert cli_main(["train", "--out", str(run), "--resume", "--epochs", "2", "--lr", "0.5", "--threads", "1",
                     "--no-progress", "--no-test-report"]) == 0
    err = capsys.readouterr().err
    assert "ignored lr=0.5" in err and "resumed after epoch 1" in err
    again = json.loads((run / "train_summary.json").read_text())
    assert [r["epochs"] for r in again["runs"]] == [[1, 1], [2, 2]] and again["runs"][1]["resumed"]
    assert again["config"]["lr"] == 0.01 and again["epochs_run"] == 2
    assert again["minutes"] == pytest.approx(sum(r["minutes"] for r in again["runs"]), abs=0.02)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all("eta_min" in r for r in rows)
    # best.pt and last.pt of the run export as well as model.pt
    for name in ("best.pt", "last.pt"):
        out = tmp_path / f"{name}.onnx"
        assert cli_main(["export", "--checkpoint", str(run / name), "--out", str(out)]) == 0, name
        assert out.exists()
    assert "choose with --name" in capsys.readouterr().err


def _split_paths(split_csv: Path) -> list[Path]:
    with split_csv.open() as fh:
        return [(split_csv.parent / row["file"]).resolve() for row in csv.DictReader(fh)]


def test_report_command_per_source_view_and_paired_comparison(site_manifest: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert cli_main(_train(site_manifest, run, "--epochs", "2", "--no-test-report")) == 0
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert cli_main(["export", "--checkpoint", str(run / "model.pt"), "--out", str(a), "--name", "site-a",
                     "--version", "2"]) == 0
    # --data-root (the site's data folder) beside the run's own split.csv: noted, the run's paths still used
    assert cli_main(["export", "--checkpoint", str(run / "last.pt"), "--out", str(b), "--name", "site-b",
                     "--data-root", str(site_manifest.parent)]) == 0
    assert "--data-root" in capsys.readouterr().err and b.is_file()
    rc = cli_main(["report", "--model", str(a), "--manifest", str(run / "split.csv"), "--compare", str(b),
                   "--split", "all", "--n-boot", "100", "--out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert rc == 0
    rep = json.loads((tmp_path / "rep" / "test_report.json").read_text())
    assert rep["model"] == "site-a 2" and rep["headline_sources"] == ["site"]
    assert set(rep["by_view"]) == {"AP", "PA"}
    for op in rep["headline"]["operating_points"].values():
        assert {"sensitivity", "normals_called_likely_normal"} <= set(op)
    head = rep["comparison"]["headline"]
    lo, hi = head["paired_bootstrap_ci95"]
    assert lo <= head["difference"] <= hi
    assert "paired comparison with site-b" in out and "view AP" in out
    assert f"verdict: this model is {head['verdict']}" in out and "the compared model" in head["verdict"]
    # the report says it scores without the intended-use gate, and what the gate would refuse
    gate = rep["intended_use_gate"]
    assert gate["applied"] is False and "scored without the intended-use gate" in out
    small = sum(min(Image.open(p).size) < 256 for p in _split_paths(run / "split.csv"))
    assert gate["films"] == len(_split_paths(run / "split.csv"))
    assert gate["the_gate_would_refuse"].get("too_small", 0) == small
    html = (tmp_path / "rep" / "test_report.html").read_text()
    assert "Paired comparison" in html and "site-a 2" in html and "<b>Verdict:</b> this model is" in html
    # missing films: named, exit 2, one line
    rc = cli_main(["report", "--model", str(a), "--manifest", str(run / "split.csv"), "--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "not found" in err and err.count("\n") == 1


def test_paired_verdict_is_one_wording_for_report_and_init_from() -> None:
    """Issue 24 re-run: `report --compare` printed no verdict; `train --init-from` did. One wording."""
    from cxr_triage.training.report_figures import paired_verdict

    assert paired_verdict(0.02, 0.005, "the init model") == \
        "better than the init model on these films (the CI lies above 0)"
    assert paired_verdict(-0.009, -0.023, "the init model") == \
        "NOT better than the init model (the difference is not above 0): keep serving the init model"
    assert paired_verdict(0.01, -0.004, "the compared model").startswith(
        "not shown to be better (the CI includes 0): keep serving the compared model")
    # the same abnormality output (e.g. only the nodule/mass head refitted): level, not "NOT better"
    assert paired_verdict(0.0, 0.0, "the compared model") == \
        "level with the compared model on these films (the same AUROC in every resample)"


def test_wrap_command_and_module_help(site: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pydicom import dcmread

    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 255, (300, 280), dtype=np.uint8)).save(big)
    assert cli_main(["wrap", str(big), "--out", str(tmp_path / "d"), "--sop-class", "CR",
                     "--transfer-syntax", "RLELossless", "--age", "45", "--view", "AP"]) == 0
    ds = dcmread(tmp_path / "d" / "big.dcm")
    assert (ds.Modality, ds.file_meta.TransferSyntaxUID.keyword, ds.PatientAge, ds.ViewPosition) == (
        "CR", "RLELossless", "045Y", "AP")
    index = list(csv.DictReader((tmp_path / "d" / "wrapped.csv").open()))
    assert index[0]["sop_instance_uid"] == ds.SOPInstanceUID
    assert cli_main(["wrap", str(big), "--out", str(tmp_path / "e"), "--transfer-syntax", "Nope"]) == 2
    assert "unsupported transfer syntax" in capsys.readouterr().err
    helped = subprocess.run([sys.executable, "-m", "cxr_triage.dicom_node.tools.wrap", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--transfer-syntax" in helped.stdout
