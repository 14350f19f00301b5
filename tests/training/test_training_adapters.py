"""Dataset adapters on tiny replicas of each public dataset's local layout."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_triage.training import adapters
from cxr_triage.training.manifest import read_manifest, write_manifest


def _png(path: Path, value: int = 100, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


def _csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def test_nih_chestxray14(tmp_path: Path) -> None:
    for name in ("00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_000.png"):
        _png(tmp_path / "images_001" / "images" / name)
    _csv(tmp_path / "Data_Entry_2017_v2020.csv",
         ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender", "View Position"],
         [["00000001_000.png", "No Finding", 0, 1, 58, "M", "PA"],
          ["00000001_001.png", "Nodule|Effusion", 1, 1, 58, "M", "AP"],
          ["00000002_000.png", "Mass", 0, 2, 40, "F", "PA"],
          ["00000003_000.png", "No Finding", 0, 3, 30, "F", "LL"],      # lateral: dropped
          ["00000009_000.png", "No Finding", 0, 9, 30, "F", "PA"]])     # no file: dropped
    es = adapters.nih_chestxray14(tmp_path)
    assert [(e.label, e.patient_id, e.nodule_or_mass) for e in es] == [(0, "nih-1", 0), (1, "nih-1", 1), (1, "nih-2", 1)]
    assert all((tmp_path / e.file).exists() for e in es)


def test_chexpert_frontal_and_uncertain(tmp_path: Path) -> None:
    base = "CheXpert-v1.0-small"
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", *adapters.CHEXPERT_FINDINGS]
    blank = [""] * len(adapters.CHEXPERT_FINDINGS)
    rows = []
    for pid, nf, finding, view in ((1, "1.0", None, "Frontal"), (2, "", ("Edema", "1.0"), "Frontal"),
                                   (3, "", ("Pneumothorax", "-1.0"), "Frontal"), (4, "1.0", None, "Lateral"),
                                   (5, "", ("Support Devices", "1.0"), "Frontal")):
        rel = f"train/patient{pid:05d}/study1/view1_{view.lower()}.jpg"
        _png(tmp_path / rel)
        vals = list(blank)
        if finding:
            vals[adapters.CHEXPERT_FINDINGS.index(finding[0])] = finding[1]
        rows.append([f"{base}/{rel}", "Male", 50, view, "PA", nf, *vals])
    _csv(tmp_path / "train.csv", header, rows)
    es = adapters.chexpert(tmp_path)
    assert [(e.patient_id, e.label) for e in es] == [("chexpert-patient00001", 0), ("chexpert-patient00002", 1),
                                                     ("chexpert-patient00003", 1)]
    assert all((tmp_path / e.file).exists() for e in es)
    assert [e.patient_id for e in adapters.chexpert(tmp_path, uncertain="drop")] == ["chexpert-patient00001", "chexpert-patient00002"]


def test_mimic_cxr_jpg(tmp_path: Path) -> None:
    header = ["subject_id", "study_id", "No Finding", *adapters.CHEXPERT_FINDINGS]
    vals = [""] * len(adapters.CHEXPERT_FINDINGS)
    lesion = list(vals)
    lesion[adapters.CHEXPERT_FINDINGS.index("Lung Lesion")] = "1.0"
    _csv(tmp_path / "mimic-cxr-2.0.0-chexpert.csv", header,
         [["10000032", "50414267", "1.0", *vals], ["10000033", "50414268", "", *lesion]])
    _csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id", "ViewPosition"],
         [["aaa", "10000032", "50414267", "PA"], ["bbb", "10000032", "50414267", "LATERAL"],
          ["ccc", "10000033", "50414268", "AP"]])
    es = adapters.mimic_cxr_jpg(tmp_path)
    assert [(e.file, e.label, e.nodule_or_mass) for e in es] == [
        ("files/p10/p10000032/s50414267/aaa.jpg", 0, 0), ("files/p10/p10000033/s50414268/ccc.jpg", 1, 1)]


def test_vindr_cxr_needs_all_readers_normal(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    for image in ("img1", "img2"):
        (tmp_path / "train" / f"{image}.dicom").write_bytes(b"")
    _csv(tmp_path / "train.csv", ["image_id", "rad_id", "class_name", "class_id"],
         [["img1", "R1", "No finding", 14], ["img1", "R2", "No finding", 14],
          ["img2", "R1", "No finding", 14], ["img2", "R3", "Nodule/Mass", 8]])
    es = adapters.vindr_cxr(tmp_path)
    assert [(e.file, e.label, e.nodule_or_mass) for e in es] == [("train/img1.dicom", 0, 0), ("train/img2.dicom", 1, 1)]


def test_shenzhen_montgomery(tmp_path: Path) -> None:
    _png(tmp_path / "ChinaSet" / "CXR_png" / "CHNCXR_0001_0.png")
    _png(tmp_path / "ChinaSet" / "CXR_png" / "CHNCXR_0327_1.png")
    _png(tmp_path / "MontgomerySet" / "CXR_png" / "MCUCXR_0104_1.png")
    _png(tmp_path / "MontgomerySet" / "ManualMask" / "leftMask" / "MCUCXR_0104_1.png")
    (tmp_path / "ChinaSet" / "ClinicalReadings").mkdir(parents=True)
    (tmp_path / "ChinaSet" / "ClinicalReadings" / "CHNCXR_0001_0.txt").write_text("male 45yrs\nnormal\n")
    (tmp_path / "MontgomerySet" / "ClinicalReadings").mkdir(parents=True)
    (tmp_path / "MontgomerySet" / "ClinicalReadings" / "MCUCXR_0104_1.txt").write_text(
        "Patient's Sex: F\nPatient's Age: 052Y\nleft upper lobe cavity\n")
    es = {e.patient_id: e for e in adapters.shenzhen_montgomery(tmp_path)}
    assert set(es) == {"shenzhen-CHNCXR_0001", "shenzhen-CHNCXR_0327", "montgomery-MCUCXR_0104"}
    assert (es["shenzhen-CHNCXR_0001"].label, es["shenzhen-CHNCXR_0001"].sex, es["shenzhen-CHNCXR_0001"].age) == (0, "M", 45)
    assert (es["montgomery-MCUCXR_0104"].label, es["montgomery-MCUCXR_0104"].sex, es["montgomery-MCUCXR_0104"].age) == (1, "F", 52)


def test_jsrt(tmp_path: Path) -> None:
    _png(tmp_path / "png" / "JPCLN001.png")
    _png(tmp_path / "png" / "JPCNN001.png")
    (tmp_path / "CLNDAT_EN.txt").write_text("JPCLN001.IMG 3 15 62 male malignant 0.5 1 2 lung\n")
    es = {e.patient_id: e for e in adapters.jsrt(tmp_path)}
    assert (es["jsrt-JPCLN001"].label, es["jsrt-JPCLN001"].nodule_or_mass, es["jsrt-JPCLN001"].sex) == (1, 1, "M")
    assert es["jsrt-JPCNN001"].label == 0
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "JPCLN002.IMG").write_bytes(b"\0" * 8)
    with pytest.raises(ValueError, match="convert"):
        adapters.jsrt(raw)


def test_shared_data_layout_and_manifest_roundtrip(shared_data: Path, tmp_path: Path) -> None:
    es = adapters.shared_data(shared_data)
    sources = {e.source for e in es}
    assert {"nih-cxr14", "nih-extra"} <= sources
    kids = [e for e in es if e.age is not None and e.age < 16]
    assert kids and all(e.split == "excluded_paediatric" for e in kids)
    assert all((shared_data / e.file).exists() for e in es[:50])
    path = write_manifest(es, tmp_path / "m.csv")
    back = read_manifest(path)
    assert [(e.file, e.label, e.patient_id, e.split) for e in back] == [(e.file, e.label, e.patient_id, e.split) for e in es]
