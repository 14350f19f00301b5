"""Turn the standard local layouts of public chest X-ray datasets into manifest entries.

Each adapter reads the dataset's own label files (never guesses labels from folder names
unless that *is* the dataset's labelling, as for Shenzhen/Montgomery), keeps frontal films
only, and sets ``label`` to abnormal when any finding is present. File paths in the entries
are relative to the dataset root. Binary "normal vs abnormal" follows each dataset's own
"No Finding" notion; uncertain CheXpert/MIMIC labels (-1) count as abnormal by default
(sensitivity first), or are dropped with ``uncertain="drop"``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from cxr_triage.contract.manifest import ManifestError, parse_age
from cxr_triage.contract.patient import parse_age_years
from cxr_triage.training.manifest import Entry, parse_label

#: film files a generic folder may hold (DICOM files may have any suffix or none)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom", "")
#: views the intended use covers; laterals are left out (the worker's gate refuses them)
FRONTAL_VIEWS = ("PA", "AP", "")


class DatasetError(ValueError):
    """A dataset folder that cannot be imported as asked (one line, no traceback)."""


@dataclass
class ImportProblems:
    """What an import left out, by kind: ``{kind: [example, ...]}`` plus a count per kind.

    Nothing is skipped silently: the ``manifest`` command prints :meth:`lines` and writes
    :meth:`to_dict` into its JSON summary. Examples are file names or CSV line numbers, never
    patient identifiers."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, example: str, keep: int = 5) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < keep:
            ex.append(example)

    def lines(self) -> list[str]:
        """One line per kind: ``<count> <kind>: first, second, ... (and N more)``."""
        out = []
        for kind, n in self.counts.items():
            ex = self.examples.get(kind, [])
            more = f" (and {n - len(ex)} more)" if n > len(ex) else ""
            out.append(f"{n} {kind}: {', '.join(ex)}{more}")
        return out

    def to_dict(self) -> dict[str, dict[str, object]]:
        return {k: {"count": n, "examples": self.examples.get(k, [])} for k, n in self.counts.items()}

    def __bool__(self) -> bool:
        return bool(self.counts)

# The 13 findings of the CheXpert labeller (also MIMIC-CXR-JPG), "No Finding" excluded.
CHEXPERT_FINDINGS = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
# Support devices alone are not a finding for triage.
_CHEXPERT_ABNORMAL = tuple(f for f in CHEXPERT_FINDINGS if f != "Support Devices")


def _open_csv(path: Path) -> Iterator[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as fh:  # type: ignore[operator]
        yield from csv.DictReader(fh)


def _find(root: Path, *names: str) -> Path:
    for name in names:
        hits = sorted(root.glob(name))
        if hits:
            return hits[0]
    raise DatasetError(f"{root}: none of {', '.join(names)} found: is this the dataset's folder?")


def _nodule(findings: str) -> int:
    return int(bool(re.search(r"\b(nodule|mass|lesion)\b", findings, re.I)))


def nih_chestxray14(root: Path) -> list[Entry]:
    """NIH ChestX-ray14: ``Data_Entry_2017*.csv`` + ``images*/[images/]*.png``."""
    root = Path(root)
    index = {p.name: p.relative_to(root) for p in root.glob("images*/**/*.png")}
    entries = []
    for row in _open_csv(_find(root, "Data_Entry_2017*.csv", "Data_Entry*.csv")):
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
        for row in _open_csv(root / csv_name):
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
                view=row.get("AP/PA", ""), findings=findings, nodule_or_mass=_nodule(findings),
            ))
    if not entries:
        raise DatasetError(f"{root}: no CheXpert train.csv/valid.csv rows (is this the CheXpert folder?)")
    return entries


def mimic_cxr_jpg(root: Path, uncertain: str = "abnormal") -> list[Entry]:
    """MIMIC-CXR-JPG: ``mimic-cxr-2.0.0-chexpert.csv[.gz]`` + ``-metadata.csv[.gz]`` + files/."""
    root = Path(root)
    labels = {(r["subject_id"], r["study_id"]): r
              for r in _open_csv(_find(root, "mimic-cxr-2.0.0-chexpert.csv*"))}
    entries = []
    for meta in _open_csv(_find(root, "mimic-cxr-2.0.0-metadata.csv*")):
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
            view=meta["ViewPosition"], findings=findings, nodule_or_mass=_nodule(findings),
        ))
    return entries


def vindr_cxr(root: Path, part: str = "train") -> list[Entry]:
    """VinDr-CXR: ``annotations/image_labels_{part}.csv`` (or ``{part}.csv`` boxes) + DICOMs.

    An image is normal when every reader's row says "No finding"; VinDr is de-identified per
    image, so the image id is the patient key.
    """
    root = Path(root)
    path = _find(root, f"annotations/image_labels_{part}.csv", f"image_labels_{part}.csv", f"{part}.csv")
    findings: dict[str, set[str]] = {}
    for row in _open_csv(path):
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
            findings=text or "No finding", nodule_or_mass=_nodule(text),
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


SHARED_FOLDERS = ("nih-cxr14", "nih-extra", "rsna-pneumonia", "rsna-normals")
#: the 14 NIH ChestX-ray14 findings, in the order of the CheXNet teacher's columns
NIH_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
#: manifest column prefix of a teacher's soft target for a finding (``teacher_Nodule``...)
TEACHER_PREFIX = "teacher_"


def _teacher(folder: Path) -> dict[str, dict[str, str]]:
    """``teacher_chexnet_repro.csv`` of a shared NIH folder: file -> {teacher_<finding>: prob}."""
    path = folder / "teacher_chexnet_repro.csv"
    if not path.exists():
        return {}
    return {row["file"]: {TEACHER_PREFIX + f: row[f"prob_{f}"] for f in NIH_FINDINGS if row.get(f"prob_{f}")}
            for row in _open_csv(path)}


def shared_data(root: Path, min_age: float = 16.0, problems: ImportProblems | None = None) -> list[Entry]:
    """This project's ``../shared/data`` (README there): nih-cxr14/, nih-extra/, rsna-pneumonia/,
    rsna-normals/.

    * NIH folders: patient ids are NIH ids shared by both folders (a few patients are in both);
      ``findings`` are the NIH labels; a folder's ``teacher_chexnet_repro.csv`` (the CheXNet
      reproduction's 14 finding probabilities) becomes ``teacher_<finding>`` columns.
    * ``rsna-pneumonia/``: radiologist labels (``rsna_class`` column); ``findings`` is
      "No Finding" for the Normal class and empty (unknown) for the others, whose NIH findings
      are not given. Patient id ``rsna-<patientId>``.
    * ``rsna-normals/``: radiologist-read normals through another pipeline. A film that is the
      twin of an rsna-pneumonia film (``twin`` column: the twin's manifest path) takes the twin's
      patient id, so both copies of one film always share a split.

    Films of patients under ``min_age`` are marked ``split="excluded_paediatric"`` (outside the
    intended use; the worker's gate refuses them), so every split tool leaves them out. Any
    other sub-folder (e.g. ``dicom/``, a site's own folder) is not read: it is reported in
    ``problems`` with the command that imports it (``--dataset folder``).
    """
    root = Path(root)
    if not (root / "nih-cxr14" / "labels.csv").exists():
        raise DatasetError(f"{root}: no nih-cxr14/labels.csv: not the shared data folder "
                           "(a folder of films with a labels CSV: use --dataset folder)")
    if problems is not None:
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if sub.name not in (*SHARED_FOLDERS, "dicom"):
                problems.add("sub-folder(s) not part of the 'shared' layout, not read "
                             "(import one with --dataset folder --root <it>)", sub.name)
            elif sub.name in SHARED_FOLDERS and not (sub / "labels.csv").exists():
                problems.add("shared sub-folder(s) without labels.csv, not read", sub.name)
    entries = []
    for folder in ("nih-cxr14", "nih-extra"):
        teacher = _teacher(root / folder)
        for row in _open_csv(root / folder / "labels.csv"):
            findings = row.get("findings", "")
            entries.append(Entry(
                file=f"{folder}/{row['file']}", label=parse_label(row["label"]),
                patient_id=f"nih-{int(row['patient_id'])}", source=folder,
                age=parse_age(row.get("age")), sex=row.get("sex", ""),
                view=row.get("view", ""), findings=findings,
                nodule_or_mass=int(row.get("nodule_or_mass") or
                                   any(f in ("Nodule", "Mass") for f in findings.split("|"))),
                extra=dict(teacher.get(row["file"], {})),
            ))
    twins: dict[str, Entry] = {}  # rsna-normals file -> its rsna-pneumonia twin
    pneumonia = root / "rsna-pneumonia" / "labels.csv"
    if pneumonia.exists():
        for row in _open_csv(pneumonia):
            pid = f"rsna-{row['patient_id']}"
            label = parse_label(row["label"])
            entries.append(Entry(
                file=f"rsna-pneumonia/{row['file']}", label=label, patient_id=pid, source="rsna-pneumonia",
                age=parse_age(row.get("age")), sex=row.get("sex", ""), view=row.get("view", ""),
                findings="No Finding" if label == 0 else "",
                extra={"rsna_class": row.get("rsna_class", ""),
                       "twin": f"rsna-normals/{row['twin_in_rsna_normals']}" if row.get("twin_in_rsna_normals") else ""},
            ))
            if row.get("twin_in_rsna_normals"):
                twins[row["twin_in_rsna_normals"]] = entries[-1]
    rsna = root / "rsna-normals" / "labels.csv"
    if rsna.exists():
        for row in _open_csv(rsna):
            twin = twins.get(row["file"])  # the same film: same patient, age, sex and view
            entries.append(Entry(
                file=f"rsna-normals/{row['file']}", label=parse_label(row["label"]),
                patient_id=twin.patient_id if twin else f"rsna-{Path(row['file']).stem}", source="rsna-normals",
                age=twin.age if twin else None, sex=twin.sex if twin else "", view=twin.view if twin else "",
                findings="No Finding",
                extra={"rsna_class": "Normal", "twin": twin.file if twin else ""},
            ))
    for e in entries:
        if e.age is not None and e.age < min_age:
            e.split = "excluded_paediatric"
    return entries


# ---------------------------------------------------------------- a site's own folder

@dataclass
class Columns:
    """Names of the labels CSV's columns (``--file-column`` ...); an empty name: not present."""

    file: str = "file"
    label: str = "label"
    patient_id: str = "patient_id"
    view: str = "view"
    age: str = "age"
    sex: str = "sex"
    source: str = "source"
    findings: str = "findings"
    split: str = "split"


def _hash_id(value: str) -> str:
    """A stable pseudonym for a patient id read from a DICOM header (no PHI in the manifest)."""
    return "pid-" + hashlib.sha256(value.encode()).hexdigest()[:16]


def _label_reader(abnormal_values: Sequence[str], normal_values: Sequence[str]) -> Callable[[str, str], int]:
    """label text -> 1 (abnormal) / 0 (normal).

    Without site spellings: the manifest's shared ones (normal/abnormal, 0/1, ...). With
    ``abnormal_values`` only: those are abnormal, any other non-empty value normal; with
    ``normal_values`` only: the reverse; with both: a value in neither is an error."""
    abn = {v.strip().lower() for v in abnormal_values if v.strip()}
    nor = {v.strip().lower() for v in normal_values if v.strip()}

    def read(value: str, where: str) -> int:
        v = (value or "").strip().lower()
        if not v:
            raise ManifestError(f"{where}: empty label")
        if not abn and not nor:
            return parse_label(value)
        if v in abn or (nor and not abn and v not in nor):
            return 1
        if v in nor or (abn and not nor):
            return 0
        raise ManifestError(f"{where}: label {value!r} is in neither --abnormal-values nor --normal-values")

    return read


def _dicom_header(path: Path):  # -> pydicom Dataset | None
    """The header of a DICOM file (no pixels), or None when it is not DICOM."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        return dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, AttributeError, TypeError):
        return None


def _image_readable(path: Path) -> bool:
    """PNG/JPEG whose header Pillow can read (cheap: the pixels are not decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - touching the header is the check
        return True
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def _header_fields(ds) -> dict[str, object]:
    """view, age, sex and a pseudonymised patient id from a DICOM header ('' / None when absent)."""
    pid = str(ds.get("PatientID", "") or "").strip()
    return {"view": str(ds.get("ViewPosition", "") or "").strip().upper(),
            "age": parse_age_years(str(ds.get("PatientAge", "") or "")),
            "sex": str(ds.get("PatientSex", "") or "").strip().upper(),
            "patient_id": _hash_id(pid) if pid else ""}


def _read_labels(labels: Path, cols: Columns, problems: ImportProblems) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(header, [(line, row), ...]) of a labels CSV; DatasetError when it cannot be used at all."""
    if not labels.is_file():
        raise DatasetError(f"labels CSV not found: {labels}")
    try:
        with labels.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = [(line, {k: (v or "") for k, v in row.items() if k is not None})
                    for line, row in enumerate(reader, start=2)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{labels}: not a readable CSV ({exc})") from None
    missing = [f"{what} column {name!r}" for what, name in (("file", cols.file), ("label", cols.label))
               if name not in header]
    if missing:
        raise DatasetError(f"{labels}: no {' and no '.join(missing)} (columns: {', '.join(header) or 'none'}); "
                           "name them with --file-column / --label-column")
    if not rows:
        raise DatasetError(f"{labels}: no rows")
    return header, rows


def folder(root: Path, labels: Path | None = None, columns: Columns | None = None, source: str = "",
           abnormal_values: Sequence[str] = (), normal_values: Sequence[str] = (), min_age: float = 16.0,
           check_files: bool = True, problems: ImportProblems | None = None) -> list[Entry]:
    """A site's own folder of films (PNG, JPEG or DICOM) and a labels CSV (default
    ``<root>/labels.csv``), one row per film.

    ``columns`` names the CSV's columns: file (relative to ``root``, or absolute) and label are
    required; patient id, view, age (years), sex, source, findings and split are read when the
    CSV has them. DICOM films without those columns get view, age and sex from their header and
    a SHA-256 pseudonym of the header's Patient ID. ``source`` (default: the column, else the
    folder's name) is the data-source name every report groups by. Labels: the shared spellings
    (normal/abnormal, 0/1, ...) or the site's own (``abnormal_values`` / ``normal_values``).
    Under ``min_age``: ``split="excluded_paediatric"``; lateral views are left out.

    Rows that cannot be used (no such file, unreadable film, bad label, duplicate, lateral) are
    left out and counted in ``problems``, and so are films in the folder without a row.
    Raises DatasetError when the labels CSV cannot be used or no row is usable.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"no such folder: {root}")
    cols = columns or Columns()
    problems = problems if problems is not None else ImportProblems()
    labels = Path(labels) if labels else root / "labels.csv"
    header, rows = _read_labels(labels, cols, problems)
    name_of = _label_reader(abnormal_values, normal_values)
    src_default = source or root.resolve().name
    entries: list[Entry] = []
    seen: set[str] = set()
    for line, row in rows:
        where = f"{labels.name}:{line}"
        name = row.get(cols.file, "").strip()
        if not name:
            problems.add("row(s) without a file name", where)
            continue
        try:
            label = name_of(row.get(cols.label, ""), where)
        except (ManifestError, ValueError):
            problems.add("row(s) with an unreadable label", f"{where} ({row.get(cols.label, '')!r})")
            continue
        path = Path(name) if Path(name).is_absolute() else root / name
        rel = name if not Path(name).is_absolute() else str(path)
        if rel in seen:
            problems.add("duplicate row(s), first kept", where)
            continue
        seen.add(rel)

        def col(key: str, row: dict[str, str] = row) -> str:
            c = getattr(cols, key)
            return row.get(c, "").strip() if c and c in header else ""

        info: dict[str, object] = {"view": col("view").upper(), "age": parse_age(col("age")),
                                   "sex": col("sex").upper(), "patient_id": col("patient_id")}
        if check_files:
            if not path.is_file():
                problems.add("film(s) not found", rel)
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                if not _image_readable(path):
                    problems.add("film(s) not readable as PNG/JPEG", rel)
                    continue
            else:
                ds = _dicom_header(path)
                if ds is None:
                    problems.add("film(s) neither PNG/JPEG nor DICOM", rel)
                    continue
                for k, v in _header_fields(ds).items():
                    if not info.get(k):
                        info[k] = v
        view = str(info["view"] or "")
        if view not in FRONTAL_VIEWS:
            problems.add("lateral or other non-frontal film(s), left out", f"{rel} ({view})")
            continue
        age = info["age"] if isinstance(info["age"], float) else None
        entry = Entry(file=rel, label=label, patient_id=str(info["patient_id"] or ""),
                      source=col("source") or src_default, age=age, sex=str(info["sex"] or ""), view=view,
                      findings=col("findings"), split=col("split"))
        if age is not None and age < min_age:
            entry.split = "excluded_paediatric"
        entries.append(entry)
    if check_files:
        listed = {(root / e.file).resolve() for e in entries} | {
            (root / r.get(cols.file, "").strip()).resolve() for _, r in rows if r.get(cols.file, "").strip()}
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix.lower() in (*IMAGE_SUFFIXES, ".dcm", ".dicom") \
                    and p.resolve() not in listed and p.resolve() != labels.resolve():
                problems.add("film(s) in the folder without a row in the labels CSV, not read",
                             str(p.relative_to(root)))
    if not entries:
        raise DatasetError(f"{labels}: no usable film ({'; '.join(problems.lines()) or 'no rows'})")
    return entries


DICOM_KEYS = {"accession_number": "AccessionNumber", "sop_instance_uid": "SOPInstanceUID",
              "study_instance_uid": "StudyInstanceUID"}


def dicom_folder(root: Path, labels: Path | None = None, key: str = "accession_number", key_column: str = "",
                 columns: Columns | None = None, source: str = "", abnormal_values: Sequence[str] = (),
                 normal_values: Sequence[str] = (), min_age: float = 16.0,
                 problems: ImportProblems | None = None) -> list[Entry]:
    """A folder of DICOM films (any layout, searched recursively) labelled by a CSV keyed by
    accession number, SOP Instance UID or Study Instance UID (``key``; the CSV's column is
    ``key_column``, default the key's name). Every frontal film whose key has a row gets that
    row's label (a study's films all get the study's label); view, age and sex come from the
    header, the patient id is a SHA-256 pseudonym of the header's Patient ID.

    Left out and counted in ``problems``: files that are not DICOM, films without a row,
    laterals, rows no film matches, unreadable labels. DatasetError when nothing is usable."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"no such folder: {root}")
    if key not in DICOM_KEYS:
        raise DatasetError(f"--key must be one of {', '.join(DICOM_KEYS)}")
    cols = columns or Columns()
    problems = problems if problems is not None else ImportProblems()
    labels = Path(labels) if labels else root / "labels.csv"
    key_column = key_column or key
    cols_for_check = Columns(file=key_column, label=cols.label)
    header, rows = _read_labels(labels, cols_for_check, problems)
    name_of = _label_reader(abnormal_values, normal_values)
    by_key: dict[str, tuple[int, int, dict[str, str]]] = {}
    for line, row in rows:
        k = row.get(key_column, "").strip()
        where = f"{labels.name}:{line}"
        if not k:
            problems.add(f"row(s) without {key_column}", where)
            continue
        try:
            by_key[k] = (line, name_of(row.get(cols.label, ""), where), row)
        except (ManifestError, ValueError):
            problems.add("row(s) with an unreadable label", f"{where} ({row.get(cols.label, '')!r})")
    entries: list[Entry] = []
    matched: set[str] = set()
    src_default = source or root.resolve().name
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.resolve() == labels.resolve() or p.suffix.lower() in (".csv", ".txt", ".json", ".md"):
            continue
        rel = str(p.relative_to(root))
        ds = _dicom_header(p)
        if ds is None:
            problems.add("file(s) that are not DICOM, not read", rel)
            continue
        k = str(ds.get(DICOM_KEYS[key], "") or "").strip()
        if k not in by_key:
            problems.add(f"DICOM film(s) whose {key} has no row in the labels CSV, not read", rel)
            continue
        matched.add(k)
        _, label, row = by_key[k]
        info = _header_fields(ds)
        view = str(info["view"])
        if view not in FRONTAL_VIEWS:
            problems.add("lateral or other non-frontal film(s), left out", f"{rel} ({view})")
            continue
        age = info["age"] if isinstance(info["age"], float) else None
        src_col = cols.source if cols.source in header else ""
        entry = Entry(file=rel, label=label, patient_id=str(info["patient_id"] or ""),
                      source=(row.get(src_col, "").strip() if src_col else "") or src_default, age=age,
                      sex=str(info["sex"]), view=view,
                      findings=row.get(cols.findings, "").strip() if cols.findings in header else "")
        if age is not None and age < min_age:
            entry.split = "excluded_paediatric"
        entries.append(entry)
    for k, (line, _, _) in by_key.items():
        if k not in matched:
            problems.add(f"row(s) whose {key} matches no DICOM film", f"{labels.name}:{line}")
    if not entries:
        raise DatasetError(f"{root}: no usable DICOM film ({'; '.join(problems.lines()) or 'no files'})")
    return entries


def drop_missing(entries: list[Entry], root: Path, problems: ImportProblems) -> list[Entry]:
    """The entries whose film exists under ``root``; the others are counted in ``problems``."""
    keep = []
    for e in entries:
        p = Path(e.file)
        if (p if p.is_absolute() else root / p).is_file():
            keep.append(e)
        else:
            problems.add("film(s) listed by the dataset's label file but not found, left out", e.file)
    return keep


ADAPTERS: dict[str, Callable[..., list[Entry]]] = {
    "nih": nih_chestxray14,
    "chexpert": chexpert,
    "mimic": mimic_cxr_jpg,
    "vindr": vindr_cxr,
    "shenzhen-montgomery": shenzhen_montgomery,
    "jsrt": jsrt,
    "shared": shared_data,
    "folder": folder,
    "dicom": dicom_folder,
}
