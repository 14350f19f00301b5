"""What `manifest --dataset dicom` and `wrap` tell a site (issue 24): the option that names a
missing key column, films whose label no spelling reads (not "has no row"), the
--abnormal-values hint, rows named by the accession a user looks up; `wrap` writes each film's
patient name, accession number and view from its manifest."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxr_triage.cli import main as cli_main


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(3).random((128, 128)) * 255).astype("uint8")).save(path)
    return path


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


@pytest.fixture
def pacs(tmp_path: Path) -> Path:
    from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom, write_dicom

    png = _png(tmp_path / "src.png")
    root = tmp_path / "pacs"
    for acc in ("A1", "A2", "A3"):
        write_dicom(png_to_dicom(png, accession_number=acc, patient_id="SECRET"), root / f"{acc}.dcm")
    return root


def test_dicom_hints_name_the_right_option_and_the_accession(pacs: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    labels = _csv(tmp_path / "reads.csv", ["acc", "label"],
                  [["A1", "Finding"], ["A2", "normal"], ["A3", "abnormal"], ["A8", "normal"], ["A9", "??"]])
    out = tmp_path / "m.csv"
    base = ["manifest", "--dataset", "dicom", "--root", str(pacs), "--labels", str(labels), "--out", str(out)]
    assert cli_main(base) == 2
    err = capsys.readouterr().err
    assert "no accession_number column 'accession_number'" in err and "--key-column" in err
    assert "--file-column" not in err

    assert cli_main([*base, "--key-column", "acc"]) == 0
    cap = capsys.readouterr()
    left = json.loads(cap.out)["left_out"]
    assert left["film(s) whose row has an unreadable label"]["examples"] == ["A1.dcm (accession_number A1: 'Finding')"]
    assert left["row(s) whose accession_number matches no DICOM film"]["examples"] == ["A8 (reads.csv:5)"]
    assert left["row(s) with an unreadable label"]["examples"] == ["A9 ('??', no DICOM film either)"]
    assert not any("has no row" in k for k in left)
    assert "hint: labels no spelling reads: give the site's own with --abnormal-values" in cap.err
    assert "SECRET" not in cap.out + cap.err

    assert cli_main([*base, "--key-column", "acc", "--abnormal-values", "Finding", "abnormal"]) == 0
    assert len(list(csv.DictReader(out.open()))) == 3


def test_wrap_takes_name_accession_and_lateral_view_from_the_manifest(tmp_path: Path) -> None:
    films = tmp_path / "films"
    _png(films / "a.png")
    _png(films / "b.png")
    manifest = _csv(tmp_path / "films.csv", ["file", "patient_id", "patient_name", "accession_number", "view"],
                    [["films/a.png", "P1", "Müller^Jürgen", "RIS-1", "PA"],
                     ["films/b.png", "P2", "Doe^Jane", "RIS-2", "Lateral"]])
    out = tmp_path / "dcm"
    assert cli_main(["wrap", str(films), "--out", str(out), "--manifest", str(manifest)]) == 0
    a, b = (pydicom.dcmread(out / f"{n}.dcm") for n in ("a", "b"))
    assert (str(a.PatientName), a.AccessionNumber, a.ViewPosition, a.SeriesDescription) == (
        "Müller^Jürgen", "RIS-1", "PA", "PA CHEST")
    assert (str(b.PatientName), b.AccessionNumber, b.ViewPosition, b.SeriesDescription) == (
        "Doe^Jane", "RIS-2", "LL", "LEFT LATERAL CHEST")
    index = list(csv.DictReader((out / "wrapped.csv").open()))
    assert [r["accession_number"] for r in index] == ["RIS-1", "RIS-2"]
    assert cli_main(["wrap", str(films), "--out", str(out), "--view", "oblique"]) == 2


def test_truncated_dicom_is_left_out_by_manifest_and_named_by_train(pacs: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    from cxr_triage.contract.preprocessing import PreprocessSpec
    from cxr_triage.training.dataset import FilmReadError, load_inputs
    from cxr_triage.training.manifest import Entry

    whole = (pacs / "A2.dcm").read_bytes()
    (pacs / "A2.dcm").write_bytes(whole[: len(whole) * 2 // 3])
    labels = _csv(tmp_path / "reads.csv", ["accession_number", "label"],
                  [["A1", "normal"], ["A2", "abnormal"], ["A3", "abnormal"]])
    out = tmp_path / "m.csv"
    assert cli_main(["manifest", "--dataset", "dicom", "--root", str(pacs), "--labels", str(labels),
                     "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert [Path(r["file"]).name for r in csv.DictReader(out.open())] == ["A1.dcm", "A3.dcm"]
    left = json.loads(cap.out)["left_out"]["film(s) that cannot be decoded (truncated or corrupt), left out"]
    assert left["count"] == 1 and left["examples"][0].startswith("A2.dcm (undecodable: ")

    # a manifest made otherwise: train's reader names the file in one line (a ValueError: exit 2)
    with pytest.raises(FilmReadError, match=r"A2\.dcm: undecodable: .*cxr-triage manifest"):
        load_inputs([Entry(file="A2.dcm", label=1)], pacs, PreprocessSpec(size=64), progress=False)


@pytest.mark.parametrize("dataset", ["dicom", "folder"])
def test_truncated_deflated_dicom_is_left_out_by_name(dataset: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """Issue 24 re-run: a deflated film cut in half made pydicom's header read raise zlib.error
    (a traceback naming no file); it is an undecodable film like any other."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom, write_dicom

    png, root = _png(tmp_path / "src.png"), tmp_path / "films"
    for acc, ts in (("A1", None), ("A2", DeflatedExplicitVRLittleEndian)):
        kw = {"transfer_syntax_uid": ts} if ts else {}
        write_dicom(png_to_dicom(png, accession_number=acc, **kw), root / f"{acc}.dcm")
    whole = (root / "A2.dcm").read_bytes()
    (root / "A2.dcm").write_bytes(whole[: len(whole) // 2])
    key = "accession_number" if dataset == "dicom" else "file"
    labels = _csv(tmp_path / "reads.csv", [key, "label"],
                  [["A1" if dataset == "dicom" else "A1.dcm", "normal"],
                   ["A2" if dataset == "dicom" else "A2.dcm", "abnormal"]])
    assert cli_main(["manifest", "--dataset", dataset, "--root", str(root), "--labels", str(labels),
                     "--out", str(tmp_path / "m.csv")]) == 0
    left = json.loads(capsys.readouterr().out)["left_out"]
    bad = left["film(s) that cannot be decoded (truncated or corrupt), left out"]
    assert bad["count"] == 1 and bad["examples"][0].startswith("A2.dcm (undecodable: ")
    assert "truncated stream" in bad["examples"][0]


def test_every_label_unreadable_exit_2_names_the_spelling_options(pacs: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """Issue 24 re-run: when no label reads, the exit-2 line itself gives the hint the docs promise."""
    labels = _csv(tmp_path / "reads.csv", ["accession_number", "label"],
                  [["A1", "Finding"], ["A2", "No Finding"], ["A3", "Finding"]])
    assert cli_main(["manifest", "--dataset", "dicom", "--root", str(pacs), "--labels", str(labels),
                     "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert "no usable DICOM film (3 film(s) whose row has an unreadable label" in err
    assert "--abnormal-values / --normal-values" in err and len(err.strip().splitlines()) == 1


def test_wrap_names_films_its_manifest_does_not_match(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 24 re-run: rows are matched by paths relative to the manifest's folder; films without
    a row were wrapped as Anonymous silently (exit 0). Now named on stderr; none matching: exit 2."""
    films = tmp_path / "films"
    for n in ("a", "b", "c"):
        _png(films / f"{n}.png")
    (tmp_path / "lists").mkdir()
    wrong = _csv(tmp_path / "lists" / "films.csv", ["file", "accession_number"],
                 [["films/a.png", "RIS-1"], ["films/b.png", "RIS-2"]])   # relative to the wrong folder
    out = tmp_path / "dcm"
    assert cli_main(["wrap", str(films), "--out", str(out), "--manifest", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert "3 of 3 film(s) have no row" in err and "relative to the manifest's folder" in err
    assert str(tmp_path / "lists") in err and not out.exists()

    some = _csv(tmp_path / "films.csv", ["file", "accession_number"], [["films/a.png", "RIS-1"]])
    assert cli_main(["wrap", str(films), "--out", str(out), "--manifest", str(some)]) == 0
    err = capsys.readouterr().err
    assert "2 of 3 film(s) have no row" in err and "b.png" in err and "Anonymous" in err
    assert pydicom.dcmread(out / "a.dcm").AccessionNumber == "RIS-1"


def test_train_names_every_undecodable_film_with_clean_paths(pacs: Path) -> None:
    """Issue 24 re-run: train stopped at the first broken film, named as runs/bad/../../x.dcm;
    every one is named now (the first few, then a count), by its resolved path."""
    from cxr_triage.contract.preprocessing import PreprocessSpec
    from cxr_triage.training.dataset import SHOWN_BAD_FILMS, FilmReadError, load_inputs
    from cxr_triage.training.manifest import Entry

    whole = (pacs / "A1.dcm").read_bytes()
    names = [f"B{i}.dcm" for i in range(SHOWN_BAD_FILMS + 2)]
    for name in names:
        (pacs / name).write_bytes(whole[: len(whole) // 2])
    entries = [Entry(file="A2.dcm", label=0)] + [Entry(file=f"../{pacs.name}/{n}", label=1) for n in names]
    with pytest.raises(FilmReadError) as err:
        load_inputs(entries, pacs, PreprocessSpec(size=64), progress=False)
    text = str(err.value)
    assert text.startswith(f"{len(names)} films cannot be decoded: {pacs.resolve() / 'B0.dcm'}: undecodable")
    assert "/../" not in text and "; and 2 more; leave them out of the manifest" in text
    assert [Path(p).name for p, _ in err.value.bad] == names
