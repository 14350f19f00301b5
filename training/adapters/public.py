"""Public chest X-ray datasets in their standard local layouts: NIH ChestX-ray14, CheXpert,
MIMIC-CXR-JPG, VinDr-CXR, Shenzhen/Montgomery and JSRT.

Each adapter reads the dataset's own label files, keeps frontal films only and sets ``label``
to abnormal when any finding is present; file paths are relative to the dataset root.
"""

from __future__ import annotations

import re
from pathlib import Path

from cxr_triage.contract.manifest import parse_age
from cxr_triage.training.adapters.common import DatasetError, find_file, nodule_in, open_csv
from cxr_triage.training.manifest import Entry

# The 13 findings of the CheXpert labeller (also MIMIC-CXR-JPG), "No Finding" excluded.
CHEXPERT_FINDINGS = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
# Support devices alone are not a finding for triage.
_CHEXPERT_ABNORMAL = tuple(f for f in CHEXPERT_FINDINGS if f != "Support Devices")


def nih_chestxray14(root: Path) -> list[Entry]:
    """NIH ChestX-ray14: ``Data_Entry_2017*.csv`` + ``images*/[images/]*.png``."""
    root = Path(root)
    index = {p.name: p.relative_to(root) for p in root.glob("images*/**/*.png")}
    entries = []
    for row in open_csv(find_file(root, "Data_Entry_2017*.csv", "Data_Entry*.csv")):
        name = row["Image Index"]
        if name not in index or row.get("View Position", "PA") not in ("PA", "AP"):
            continue
        findings = row["Finding Labels"]
        entries.append(Entry(
            file=str(index[name]), label=int(findings != "No Finding"),
            patient_id=f"nih-{int(row['Patient ID'])}", source="nih-cxr14",
            age=parse_age(row["Patient Age"]), sex=row.get("Patient Gender", ""),
            view=row.get("View Position", ""), findings=findings,
            nodule_or_mass=int(any(f in ("Nodule", "Mass") for f in findings.split("|"))),
        ))
    return entries


def _chexpert_label(row: dict[str, str], uncertain: str) -> int | None:
    values = {f: (row.get(f) or "").strip() for f in _CHEXPERT_ABNORMAL}
    positive = [f for f, v in values.items() if v in ("1", "1.0")]
    unsure = [f for f, v in values.items() if v in ("-1", "-1.0")]
    if positive or (unsure and uncertain == "abnormal"):
        return 1
    if unsure:
        return None
    if (row.get("No Finding") or "").strip() in ("1", "1.0"):
        return 0
    return None  # neither a finding nor "No Finding": unlabelled for this task


def _findings(row: dict[str, str]) -> str:
    return "|".join(f for f in _CHEXPERT_ABNORMAL if (row.get(f) or "").strip() in ("1", "1.0", "-1", "-1.0"))


def chexpert(root: Path, uncertain: str = "abnormal") -> list[Entry]:
    """CheXpert (full or -small): ``train.csv``/``valid.csv`` with ``Path`` column."""
    root = Path(root)
    entries = []
    for csv_name in ("train.csv", "valid.csv"):
        if not (root / csv_name).exists():
            continue
        for row in open_csv(root / csv_name):
            if row.get("Frontal/Lateral", "Frontal") != "Frontal":
                continue
            label = _chexpert_label(row, uncertain)
            if label is None:
                continue
            rel = Path(row["Path"])
            if not (root / rel).exists() and len(rel.parts) > 1:
                rel = Path(*rel.parts[1:])  # paths start with the dataset folder name
            pid = next((p for p in rel.parts if p.startswith("patient")), str(rel))
            findings = _findings(row)
            entries.append(Entry(
                file=str(rel), label=label, patient_id=f"chexpert-{pid}", source="chexpert",
                age=parse_age(row.get("Age")), sex=row.get("Sex", ""),
                view=row.get("AP/PA", ""), findings=findings, nodule_or_mass=nodule_in(findings),
            ))
    if not entries:
        raise DatasetError(f"{root}: no CheXpert train.csv/valid.csv rows (is this the CheXpert folder?)")
    return entries


def mimic_cxr_jpg(root: Path, uncertain: str = "abnormal") -> list[Entry]:
    """MIMIC-CXR-JPG: ``mimic-cxr-2.0.0-chexpert.csv[.gz]`` + ``-metadata.csv[.gz]`` + files/."""
    root = Path(root)
    labels = {(r["subject_id"], r["study_id"]): r
              for r in open_csv(find_file(root, "mimic-cxr-2.0.0-chexpert.csv*"))}
    entries = []
    for meta in open_csv(find_file(root, "mimic-cxr-2.0.0-metadata.csv*")):
        if meta.get("ViewPosition") not in ("PA", "AP"):
            continue
        row = labels.get((meta["subject_id"], meta["study_id"]))
        if row is None:
            continue
        label = _chexpert_label(row, uncertain)
        if label is None:
            continue
        sid = meta["subject_id"]
        rel = Path("files") / f"p{sid[:2]}" / f"p{sid}" / f"s{meta['study_id']}" / f"{meta['dicom_id']}.jpg"
        findings = _findings(row)
        entries.append(Entry(
            file=str(rel), label=label, patient_id=f"mimic-{sid}", source="mimic-cxr-jpg",
            view=meta["ViewPosition"], findings=findings, nodule_or_mass=nodule_in(findings),
        ))
    return entries


def vindr_cxr(root: Path, part: str = "train") -> list[Entry]:
    """VinDr-CXR: ``annotations/image_labels_{part}.csv`` (or ``{part}.csv`` boxes) + DICOMs.

    An image is normal when every reader's row says "No finding"; VinDr is de-identified per
    image, so the image id is the patient key.
    """
    root = Path(root)
    path = find_file(root, f"annotations/image_labels_{part}.csv", f"image_labels_{part}.csv", f"{part}.csv")
    findings: dict[str, set[str]] = {}
    for row in open_csv(path):
        image = row["image_id"]
        found = findings.setdefault(image, set())
        if "class_name" in row:  # box file: one row per box or "No finding"
            if row["class_name"] != "No finding":
                found.add(row["class_name"])
        else:  # one-hot image labels per radiologist
            skip = {"image_id", "rad_id", "rad_ID", "No finding"}
            found.update(k for k, v in row.items() if k not in skip and v.strip() in ("1", "1.0"))
    entries = []
    for image, found in sorted(findings.items()):
        rel = next((Path(part) / f"{image}{ext}" for ext in (".dicom", ".dcm", ".png")
                    if (root / part / f"{image}{ext}").exists()), Path(part) / f"{image}.dicom")
        text = "|".join(sorted(found))
        entries.append(Entry(
            file=str(rel), label=int(bool(found)), patient_id=f"vindr-{image}", source="vindr-cxr",
            findings=text or "No finding", nodule_or_mass=nodule_in(text),
        ))
    return entries


def _clinical(text: str) -> tuple[str, float | None]:
    sex = ""
    m = re.search(r"\b(male|female|M|F)\b", text, re.I)
    if m:
        sex = "F" if m.group(1).lower().startswith("f") else "M"
    age = None
    m = re.search(r"(\d{1,3})\s*(?:Y\b|yrs?|years?)", text, re.I) or re.search(r"Age:\s*0*(\d+)", text, re.I)
    if m:
        age = float(m.group(1))
    return sex, age


def shenzhen_montgomery(root: Path) -> list[Entry]:
    """Shenzhen (CHNCXR_*) / Montgomery (MCUCXR_*) TB sets: the ``_0``/``_1`` suffix is the
    dataset's label (0 normal, 1 tuberculosis); ``ClinicalReadings/*.txt`` gives age/sex."""
    root = Path(root)
    entries = []
    for p in sorted(root.glob("**/*.png")):
        m = re.fullmatch(r"((?:CHN|MCU)CXR_\d+)_([01])", p.stem)
        if not m or "mask" in str(p.relative_to(root)).lower():
            continue
        txt = next(iter(root.glob(f"**/ClinicalReadings/{p.stem}.txt")), None)
        reading = txt.read_text(errors="replace") if txt else ""
        sex, age = _clinical(reading)
        source = "shenzhen" if m.group(1).startswith("CHN") else "montgomery"
        entries.append(Entry(
            file=str(p.relative_to(root)), label=int(m.group(2)), patient_id=f"{source}-{m.group(1)}",
            source=source, age=age, sex=sex, view="PA",
            findings=" ".join(reading.split())[:200] if int(m.group(2)) else "normal",
        ))
    if not entries:
        raise DatasetError(f"{root}: no CHNCXR_*/MCUCXR_* PNG films")
    return entries


def jsrt(root: Path) -> list[Entry]:
    """JSRT: ``JPCLN*`` films have a nodule, ``JPCNN*`` none; ``CLNDAT_EN.txt`` has age/sex.

    Reads PNG/JPEG conversions of the films; the raw 12-bit ``.IMG`` files must be converted
    first (their byte order and polarity differ between distributions, so no guess here).
    """
    root = Path(root)
    info: dict[str, tuple[str, float | None]] = {}
    for name in ("CLNDAT_EN.txt", "CNNDAT_EN.txt"):
        for p in root.glob(f"**/{name}"):
            for line in p.read_text(errors="replace").splitlines():
                parts = line.split()
                if parts and parts[0].upper().startswith("JPC"):
                    stem = Path(parts[0]).stem.upper()
                    ages = [float(x) for x in parts[1:] if re.fullmatch(r"\d{1,3}", x)]
                    sex = next((x[0].upper() for x in parts[1:] if x.lower() in ("male", "female")), "")
                    info[stem] = (sex, ages[0] if ages else None)
    entries = []
    films = [p for p in sorted(root.glob("**/*")) if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    for p in films:
        m = re.fullmatch(r"(JPC(LN|NN)\d{3})", p.stem.upper())
        if not m:
            continue
        sex, age = info.get(m.group(1), ("", None))
        nodule = int(m.group(2) == "LN")
        entries.append(Entry(
            file=str(p.relative_to(root)), label=nodule, patient_id=f"jsrt-{m.group(1)}", source="jsrt",
            age=age, sex=sex, view="PA", findings="Nodule" if nodule else "No Finding",
            nodule_or_mass=nodule,
        ))
    if not entries and any(root.glob("**/*.IMG")):
        raise DatasetError(f"{root}: only raw JSRT .IMG files; convert them to PNG first")
    return entries
