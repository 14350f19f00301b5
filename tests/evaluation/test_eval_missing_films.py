"""Missing and unreadable films are named, never silently "not assessable": evaluate and
commission take --data-root, stop when films are missing or nothing is assessable, and a
manifest's ``site`` column is read as ``source``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cxr_triage.cli import main as cli_main


def _manifest(path: Path, rows: list[list[str]], header: tuple[str, ...] = ("file", "label", "site")) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def films(shared_data: Path) -> list[list[str]]:
    rows = list(csv.DictReader((shared_data / "nih-cxr14" / "labels.csv").open()))
    pick = [r for r in rows if r["label"] == "normal"][:6] + [r for r in rows if r["label"] == "abnormal"][:6]
    return [[r["file"], r["label"], "A" if i % 2 else "B"] for i, r in enumerate(pick)]


def test_evaluate_names_missing_films_and_takes_data_root(films: list[list[str]], shared_data: Path, tiny_model: Path,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = _manifest(tmp_path / "m.csv", films)
    rc = cli_main(["evaluate", str(manifest), "--model", str(tiny_model), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "12 of 12 film(s) not found" in err and films[0][0] in err and "and 7 more" in err
    assert "--data-root" in err and "Traceback" not in err
    rc = cli_main(["evaluate", str(manifest), "--model", str(tiny_model), "--data-root", str(shared_data / "nih-cxr14"),
                   "--out", str(tmp_path / "r"), "--n-boot", "50"])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert {row["value"] for row in rep["subgroups"]["source"]} == {"A", "B"}  # 'site' read as 'source'


def test_evaluate_some_missing_needs_allow_missing(films: list[list[str]], shared_data: Path, tiny_model: Path,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = shared_data / "nih-cxr14"
    manifest = _manifest(tmp_path / "m.csv", [*films, ["images/not_here.png", "abnormal", "A"]])
    args = ["evaluate", str(manifest), "--model", str(tiny_model), "--data-root", str(root), "--out", str(tmp_path / "r"),
            "--n-boot", "50"]
    assert cli_main(args) == 2
    assert "1 of 13 film(s) not found" in capsys.readouterr().err
    assert cli_main([*args, "--allow-missing"]) == 0
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["counts"]["films"] == 12 and any("not_here.png" in w for w in rep["warnings"])


def test_evaluate_exits_non_zero_when_nothing_is_assessable(tmp_path: Path, tiny_model: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"this is no image")
    manifest = _manifest(tmp_path / "m.csv", [["a.png", "normal", "A"], ["b.png", "abnormal", "A"]])
    rc = cli_main(["evaluate", str(manifest), "--model", str(tiny_model), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "none of the 2 film(s) is assessable" in err and "a.png" in err and "undecodable" in err


def test_commission_takes_data_root_and_names_missing_films(films: list[list[str]], shared_data: Path,
                                                            tiny_model: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    manifest = _manifest(tmp_path / "m.csv", films)
    base = ["commission", "--manifest", str(manifest), "--model", str(tiny_model), "--site", "t",
            "--out", str(tmp_path / "s.json")]
    assert cli_main(base) == 2
    err = capsys.readouterr().err
    assert "12 of 12 film(s) not found" in err and films[0][0] in err
    # found with --data-root; 6 abnormal films are too few for the 0.98 bound: exit 3, quietly
    assert cli_main([*base, "--data-root", str(shared_data / "nih-cxr14")]) == 3
    cap = capsys.readouterr()
    assert "no threshold meets the rule" in cap.err and '"level": "INFO"' not in cap.err
