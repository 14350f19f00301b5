"""Patient-level, label-stratified train/validation/test split.

All films of a patient land in one split (no leakage through follow-up films); the strata
are label x source so each split keeps the mix of classes and sources of the whole set.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from cxr_triage.training.manifest import Entry

SPLITS = ("train", "val", "test")


def assign_splits(entries: list[Entry], val_fraction: float = 0.2, test_fraction: float = 0.2,
                  seed: int = 0) -> list[Entry]:
    """Set ``entry.split`` for entries without one; entries already split keep theirs.

    Fractions are rounded to folds of StratifiedGroupKFold (k = round(1 / smallest fraction)).
    """
    todo = [e for e in entries if not e.split]
    if not todo:
        return entries
    fractions = [f for f in (val_fraction, test_fraction) if f > 0]
    k = max(2, int(round(1.0 / min(fractions)))) if fractions else 1
    n_val = int(round(val_fraction * k))
    n_test = int(round(test_fraction * k))
    if n_val + n_test >= k:
        raise ValueError(f"val {val_fraction} + test {test_fraction} leave no training data")
    strata = np.array([f"{e.label}|{e.source}" for e in todo])
    groups = np.array([e.patient_id for e in todo])
    # A patient's stratum: its most severe label (abnormal if any film is), so folds stay whole.
    by_patient: dict[str, str] = {}
    for e, s in zip(todo, strata):
        if by_patient.get(e.patient_id, "0|").split("|")[0] != "1":
            by_patient[e.patient_id] = s
    strata = np.array([by_patient[g] for g in groups])
    n_splits = min(k, min(Counter(by_patient.values()).values()), len(set(groups)))
    if n_splits < 2:  # too few patients per stratum: random patient-level folds
        rng = np.random.default_rng(seed)
        patients = sorted(set(groups))
        pf = dict(zip(patients, rng.integers(0, k, len(patients))))
        fold_of = np.array([pf[g] for g in groups])
    else:
        fold_of = np.empty(len(todo), dtype=int)
        sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        for fold, (_, idx) in enumerate(sgkf.split(np.zeros(len(todo)), strata, groups)):
            fold_of[idx] = fold
        k = n_splits
        n_val = max(1, int(round(val_fraction * k))) if val_fraction > 0 else 0
        n_test = max(1, int(round(test_fraction * k))) if test_fraction > 0 else 0
    for e, fold in zip(todo, fold_of):
        e.split = "test" if fold < n_test else "val" if fold < n_test + n_val else "train"
    check_no_leakage(entries)
    return entries


#: a patient whose films an earlier split put in several parts goes to the first of these: a
#: film the earlier model trained on never lands in the new validation or test part
REGROUP_ORDER = ("train", "val", "test")


def keep_previous_splits(entries: list[Entry], previous: dict[str, str]) -> list[str]:
    """Give ``entries`` the split ``previous`` (file -> split) had, one part per patient.

    Films of one patient (``patient_id``) that the earlier split put in different parts all go
    to the first part of :data:`REGROUP_ORDER` among them; a film the earlier split did not
    list takes its patient's part. Entries already split (e.g. ``excluded_paediatric``) are
    left alone. Returns the patients moved, so a caller can say how many."""
    parts: dict[str, set[str]] = {}
    for e in entries:
        if not e.split and previous.get(e.file) in SPLITS:
            parts.setdefault(e.patient_id, set()).add(previous[e.file])
    moved = sorted(p for p, s in parts.items() if len(s) > 1)
    chosen = {p: next(x for x in REGROUP_ORDER if x in s) for p, s in parts.items()}
    for e in entries:
        if not e.split and e.patient_id in chosen:
            e.split = chosen[e.patient_id]
    return moved


def check_no_leakage(entries: list[Entry]) -> None:
    """Raise if a patient has films in two splits."""
    seen: dict[str, str] = {}
    for e in entries:
        if e.split not in SPLITS:
            continue
        prev = seen.setdefault(e.patient_id, e.split)
        if prev != e.split:
            raise ValueError(f"patient {e.patient_id!r} is in both {prev!r} and {e.split!r}")


def summarise(entries: list[Entry]) -> dict[str, dict[str, int]]:
    """Counts per split: films, abnormal, normal, patients."""
    out: dict[str, dict[str, int]] = {}
    for split in sorted({e.split for e in entries}):
        part = [e for e in entries if e.split == split]
        out[split] = {
            "films": len(part),
            "abnormal": sum(e.label for e in part),
            "normal": sum(1 - e.label for e in part),
            "patients": len({e.patient_id for e in part}),
        }
    return out
