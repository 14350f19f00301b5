"""The split by NIH patient across all shared sources, and the rsna-pneumonia label conflict."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from cxr_triage.paths import repo_root
from cxr_triage.training import adapters
from cxr_triage.training.manifest import Entry, read_manifest
from cxr_triage.training.split import check_no_leakage, keep_previous_splits
from cxr_triage.training.targets import ABNORMAL, NODULE, nodule_known, nodule_truth, targets

SPLIT = repo_root() / "model" / "default_split.csv"


def _nih_patient_of_each_film(data: Path) -> dict[str, str]:
    """manifest file -> NIH patient id, read from the shared folders' own CSVs (not the split)."""
    out: dict[str, str] = {}
    for folder in ("nih-cxr14", "nih-extra"):
        for row in csv.DictReader((data / folder / "labels.csv").open()):
            out[f"{folder}/{row['file']}"] = str(int(row["patient_id"]))
    rsna = data / "rsna-pneumonia" / "labels.csv"
    for row in csv.DictReader(rsna.open()):
        if row.get("nih_patient_id"):
            out[f"rsna-pneumonia/{row['file']}"] = str(int(row["nih_patient_id"]))
            if row.get("twin_in_rsna_normals"):
                out[f"rsna-normals/{row['twin_in_rsna_normals']}"] = str(int(row["nih_patient_id"]))
    return out


def test_committed_split_keeps_every_nih_patient_in_one_part(shared_data: Path) -> None:
    if not (shared_data / "rsna-pneumonia" / "labels.csv").exists():
        pytest.skip("no rsna-pneumonia folder")
    nih = _nih_patient_of_each_film(shared_data)
    parts: dict[str, set[str]] = defaultdict(set)
    sources: dict[str, set[str]] = defaultdict(set)
    rows = read_manifest(SPLIT)
    for e in rows:
        if e.split in ("train", "val", "test") and e.file in nih:
            parts[nih[e.file]].add(e.split)
            sources[nih[e.file]].add(e.source)
    assert parts, "no film of the split has an NIH patient"
    spread = {p: s for p, s in parts.items() if len(s) > 1}
    assert not spread, f"{len(spread)} NIH patient(s) in several parts, e.g. {list(spread.items())[:3]}"
    # patients with films in several sources exist, so the check above is not vacuous
    assert any(len(s) > 1 for s in sources.values())
    check_no_leakage(rows)


def test_adapter_gives_rsna_films_their_nih_patient_and_labels(shared_data: Path) -> None:
    if not (shared_data / "rsna-pneumonia" / "labels.csv").exists():
        pytest.skip("no rsna-pneumonia folder")
    entries = [e for e in adapters.shared_data(shared_data) if e.source == "rsna-pneumonia"]
    nih = _nih_patient_of_each_film(shared_data)
    assert all(e.patient_id == f"nih-{nih[e.file]}" for e in entries if e.file in nih)
    conflicts = [e for e in entries if e.extra.get(adapters.LABEL_CONFLICT)]
    assert len(conflicts) == 25
    assert all(e.label == 0 and e.nodule_or_mass == 1 and e.findings == "No Finding" for e in conflicts)
    # abnormal films carry NIH's findings, so their nodule/mass status is known
    nodule = [e for e in entries if e.label == 1 and e.nodule_or_mass]
    assert nodule and all(nodule_known(nodule)) and all(nodule_truth(nodule) == 1)


def _e(file: str, patient: str, label: int = 0, split: str = "", **extra: str) -> Entry:
    return Entry(file=file, label=label, patient_id=patient, source="s", split=split, extra=dict(extra))


def test_keep_previous_splits_puts_a_spread_patient_in_one_part() -> None:
    entries = [_e("a1", "A"), _e("a2", "A"), _e("b1", "B"), _e("b2", "B"), _e("c1", "C"), _e("new", "C"),
               _e("kid", "D", split="excluded_paediatric")]
    before = {"a1": "test", "a2": "train", "b1": "test", "b2": "val", "c1": "val", "kid": "train"}
    moved = keep_previous_splits(entries, before)
    got = {e.file: e.split for e in entries}
    assert moved == ["A", "B"]
    # train wins over val over test: no film an earlier model trained on enters val or test
    assert got == {"a1": "train", "a2": "train", "b1": "val", "b2": "val", "c1": "val", "new": "val",
                   "kid": "excluded_paediatric"}
    check_no_leakage(entries)


def test_conflicting_film_is_masked_for_abnormal_and_nodule_targets() -> None:
    conflict = Entry(file="x", label=0, findings="No Finding", nodule_or_mass=1,
                     extra={adapters.LABEL_CONFLICT: adapters.NODULE_READ_NORMAL})
    plain = Entry(file="y", label=0, findings="No Finding")
    y, known = targets([conflict, plain], multitask=True)
    assert known[0, ABNORMAL] == 0 and known[0, NODULE] == 0 and known[1, ABNORMAL] == 1 and known[1, NODULE] == 1
    assert list(nodule_known([conflict, plain])) == [False, True]
    assert y[1, NODULE] == 0


def test_multitask_loss_leaves_out_a_film_whose_abnormal_target_is_masked() -> None:
    import torch

    from cxr_triage.training.losses import build_losses

    _, loss = build_losses("label", 0.0, 3, 1.0, 0.3, 0.5, [("s", 0)] * 4, "cpu")
    logits = torch.tensor(np.random.default_rng(0).normal(size=(4, 3)), dtype=torch.float32)
    y = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)
    first = torch.zeros_like(y)
    first[:, 0] = 1.0  # column 0 known only, so the loss is the abnormal output's alone
    masked = first.clone()
    masked[3, 0] = 0.0
    full3 = loss(logits[:3], y[:3], first[:3])
    assert torch.isclose(loss(logits, y, masked), full3)
    assert not torch.isclose(loss(logits, y, first), full3)
