"""This project's shared data folder (``../shared/data``): NIH, RSNA pneumonia and the
RSNA normals through another pipeline, with teacher soft targets and twin films."""

from __future__ import annotations

from pathlib import Path

from cxr_triage.contract.manifest import parse_age
from cxr_triage.training.adapters.common import DatasetError, ImportProblems, open_csv
from cxr_triage.training.manifest import Entry, parse_label

SHARED_FOLDERS = ("nih-cxr14", "nih-extra", "rsna-pneumonia", "rsna-normals")
#: the 14 NIH ChestX-ray14 findings, in the order of the CheXNet teacher's columns
NIH_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
#: manifest column prefix of a teacher's soft target for a finding (``teacher_Nodule``...)
TEACHER_PREFIX = "teacher_"
#: manifest column: the film's long side in mm (from the original pixel spacing), for lesions of a true size
FIELD_MM = "field_mm"
#: manifest column marking a film whose labels disagree (see :func:`_rsna_pneumonia_entry`)
LABEL_CONFLICT = "label_conflict"
#: :data:`LABEL_CONFLICT` value: NIH's NLP labels say Nodule/Mass, the RSNA radiologists read Normal
NODULE_READ_NORMAL = "nodule_read_normal"


def _teacher(folder: Path) -> dict[str, dict[str, str]]:
    """``teacher_chexnet_repro.csv`` of a shared folder (NIH folders, rsna-pneumonia/):
    file -> {teacher_<finding>: prob}; {} when the folder has none."""
    path = folder / "teacher_chexnet_repro.csv"
    if not path.exists():
        return {}
    return {row["file"]: {TEACHER_PREFIX + f: row[f"prob_{f}"] for f in NIH_FINDINGS if row.get(f"prob_{f}")}
            for row in open_csv(path)}


def shared_data(root: Path, min_age: float = 16.0, problems: ImportProblems | None = None) -> list[Entry]:
    """This project's ``../shared/data`` (README there): nih-cxr14/, nih-extra/, rsna-pneumonia/,
    rsna-normals/.

    * NIH folders: patient ids are NIH ids shared by both folders (a few patients are in both);
      ``findings`` are the NIH labels; a folder's ``teacher_chexnet_repro.csv`` (the CheXNet
      reproduction's 14 finding probabilities) becomes ``teacher_<finding>`` columns.
    * ``rsna-pneumonia/``: radiologist labels (``rsna_class`` column), see
      :func:`_rsna_pneumonia_entry` (NIH patient ids, NIH findings, the label conflict); its
      ``teacher_chexnet_repro.csv`` (207 films) becomes ``teacher_<finding>`` columns as above.
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
        for row in open_csv(root / folder / "labels.csv"):
            findings = row.get("findings", "")
            extra = dict(teacher.get(row["file"], {}))
            if row.get("orig_pixel_spacing_mm") and row.get("orig_width") and row.get("orig_height"):
                extra[FIELD_MM] = f"{_field_mm(row):.1f}"
            entries.append(Entry(
                file=f"{folder}/{row['file']}", label=parse_label(row["label"]),
                patient_id=f"nih-{int(row['patient_id'])}", source=folder,
                age=parse_age(row.get("age")), sex=row.get("sex", ""),
                view=row.get("view", ""), findings=findings,
                nodule_or_mass=int(row.get("nodule_or_mass") or
                                   any(f in ("Nodule", "Mass") for f in findings.split("|"))),
                extra=extra,
            ))
    twins: dict[str, Entry] = {}  # rsna-normals file -> its rsna-pneumonia twin
    pneumonia = root / "rsna-pneumonia" / "labels.csv"
    if pneumonia.exists():
        teacher = _teacher(root / "rsna-pneumonia")
        for row in open_csv(pneumonia):
            entries.append(_rsna_pneumonia_entry(row))
            entries[-1].extra.update(teacher.get(row["file"], {}))
            if row.get("twin_in_rsna_normals"):
                twins[row["twin_in_rsna_normals"]] = entries[-1]
    rsna = root / "rsna-normals" / "labels.csv"
    if rsna.exists():
        for row in open_csv(rsna):
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


def _field_mm(row: dict[str, str]) -> float:
    """An NIH film's long side in mm: original pixel spacing x original long side (pixels)."""
    return float(row["orig_pixel_spacing_mm"]) * max(float(row["orig_width"]), float(row["orig_height"]))


def _rsna_pneumonia_entry(row: dict[str, str]) -> Entry:
    """One ``rsna-pneumonia/labels.csv`` row (../shared/data/README.md).

    * Patient id: ``nih-<nih_patient_id>``, the id the NIH folders use, so one NIH patient's
      films share a split across all sources; ``rsna-<patientId>`` without an NIH match.
    * ``label``: the RSNA radiologists' read (Normal vs the rest), always.
    * ``findings``: "No Finding" for a radiologist-read Normal film; NIH's NLP labels
      (``nih_findings``) for the other films, so their nodule/mass status and the 14 finding
      targets are known; ``nodule_or_mass`` from the column.
    * The conflict: a film read Normal by the RSNA radiologists whose NIH labels include
      Nodule/Mass (25 films) keeps its normal label (the radiologist's read of this film) but
      gets ``label_conflict = nodule_read_normal``: training masks its abnormal and nodule/mass
      targets (it teaches neither "nodule = normal" nor a nodule nobody saw on the film) and
      the nodule/mass figures leave it out of both classes (:mod:`cxr_triage.training.targets`).
    """
    label = parse_label(row["label"])
    nodule = int(row.get("nodule_or_mass") or 0)
    nih_pid = (row.get("nih_patient_id") or "").strip()
    extra = {"rsna_class": row.get("rsna_class", ""),
             "twin": f"rsna-normals/{row['twin_in_rsna_normals']}" if row.get("twin_in_rsna_normals") else ""}
    if label == 0 and nodule:
        extra[LABEL_CONFLICT] = NODULE_READ_NORMAL
    return Entry(
        file=f"rsna-pneumonia/{row['file']}", label=label,
        patient_id=f"nih-{int(nih_pid)}" if nih_pid else f"rsna-{row['patient_id']}", source="rsna-pneumonia",
        age=parse_age(row.get("age")), sex=row.get("sex", ""), view=row.get("view", ""),
        findings="No Finding" if label == 0 else (row.get("nih_findings") or ""),
        nodule_or_mass=nodule, extra=extra,
    )
