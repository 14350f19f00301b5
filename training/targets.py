"""What the network learns per film: its tasks, their targets and which targets are known.

Tasks (the network's outputs, in order):

0. ``abnormal``: the manifest's label (1 abnormal, 0 normal); always known.
1. ``nodule_or_mass``: the lung-cancer proxy (NIH findings Nodule or Mass).
2. ``finding_<name>``: the 14 NIH ChestX-ray14 findings, auxiliary targets that give the
   shared features more to learn from than one noisy bit per film.

A finding target is *known* for a film whose ``findings`` column is filled (NIH labels, or
"No Finding") or whose label is normal (a normal film has no finding); otherwise (e.g. an
RSNA "Lung Opacity" film, whose NIH findings are not given) it is masked out of the loss.

A film whose labels conflict (``label_conflict`` column: NIH's NLP labels say Nodule/Mass,
the RSNA radiologists read it Normal; :mod:`cxr_triage.training.adapters.shared`) has its
abnormal, nodule/mass, Nodule and Mass targets masked, and its nodule/mass status unknown.

Knowledge distillation (Hinton et al. 2015): a manifest column ``teacher_<finding>`` holds a
teacher model's probability for that finding (here the CheXNet reproduction's, trained on
~78k NIH films). With weight ``distill`` = λ the target becomes (1 - λ) hard + λ soft; for
``nodule_or_mass`` the soft target is 1 - (1 - p_Nodule)(1 - p_Mass). A teacher probability
also makes a target known where the NLP labels are missing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cxr_triage.training.adapters import LABEL_CONFLICT, NIH_FINDINGS, TEACHER_PREFIX
from cxr_triage.training.manifest import Entry

ABNORMAL, NODULE = 0, 1
TASKS: tuple[str, ...] = ("abnormal", "nodule_or_mass", *(f"finding_{f}" for f in NIH_FINDINGS))


def n_outputs(multitask: bool) -> int:
    """Network outputs for a recipe: every task, or the abnormal output alone."""
    return len(TASKS) if multitask else 1


def _finding_set(findings: str) -> set[str]:
    return {f.strip().replace(" ", "_") for f in findings.split("|") if f.strip()}


def _teacher(e: Entry, finding: str) -> float | None:
    raw = e.extra.get(TEACHER_PREFIX + finding, "")
    try:
        p = float(raw)
    except ValueError:
        return None
    return p if 0.0 <= p <= 1.0 else None


def targets(entries: Sequence[Entry], multitask: bool = True, distill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(targets, known): both float32 (N, K), K = :func:`n_outputs`; ``known`` is 1 where the
    target enters the loss. ``distill`` in [0, 1] mixes in the teacher's soft targets."""
    k = n_outputs(multitask)
    y = np.zeros((len(entries), k), dtype=np.float32)
    known = np.zeros_like(y)
    for i, e in enumerate(entries):
        y[i, ABNORMAL] = float(e.label)
        known[i, ABNORMAL] = 1.0
        if k == 1:
            continue
        findings = _finding_set(e.findings)
        labelled = bool(findings) or e.label == 0
        soft = {f: _teacher(e, f) for f in NIH_FINDINGS}
        for j, f in enumerate(NIH_FINDINGS, start=2):
            hard = float(f in findings) if labelled else None
            y[i, j], known[i, j] = _mix(hard, soft[f], distill)
        hard_nm = float(bool(e.nodule_or_mass) or bool(findings & {"Nodule", "Mass"})) if labelled else None
        pn, pm = soft["Nodule"], soft["Mass"]
        soft_nm = None if pn is None or pm is None else 1.0 - (1.0 - pn) * (1.0 - pm)
        y[i, NODULE], known[i, NODULE] = _mix(hard_nm, soft_nm, distill)
        if conflicting(e):
            known[i, [ABNORMAL, NODULE, *NODULE_FINDINGS]] = 0.0
    return y, known


#: the output columns of the Nodule and Mass findings
NODULE_FINDINGS = tuple(2 + NIH_FINDINGS.index(f) for f in ("Nodule", "Mass"))


def conflicting(e: Entry) -> bool:
    """Whether the film's labels conflict (its ``label_conflict`` column is set)."""
    return bool(e.extra.get(LABEL_CONFLICT))


def _mix(hard: float | None, soft: float | None, distill: float) -> tuple[float, float]:
    """(target, known) from a hard label and a teacher probability (either may be missing)."""
    if hard is None and (soft is None or distill <= 0):
        return 0.0, 0.0
    if hard is None:
        return float(soft), 1.0  # type: ignore[arg-type]
    if soft is None or distill <= 0:
        return hard, 1.0
    return (1.0 - distill) * hard + distill * soft, 1.0


def nodule_known(entries: Sequence[Entry]) -> np.ndarray:
    """(N,) bool: films whose nodule/mass status is known from labels (not the teacher), label
    conflicts left out: the films the nodule/mass output is calibrated and measured on."""
    return np.array([(bool(_finding_set(e.findings)) or e.label == 0) and not conflicting(e) for e in entries],
                    dtype=bool)


def nodule_truth(entries: Sequence[Entry]) -> np.ndarray:
    """(N,) int: 1 for a Nodule/Mass film (hard labels)."""
    return np.array([int(bool(e.nodule_or_mass) or bool(_finding_set(e.findings) & {"Nodule", "Mass"}))
                     for e in entries])


def nodule_normals(entries: Sequence[Entry]) -> np.ndarray:
    """(N,) bool: the negatives of the lung-cancer question: normal films whose nodule/mass
    status is known (:func:`nodule_known`: label conflicts left out) and not Nodule/Mass."""
    labels = np.array([e.label for e in entries])
    return nodule_known(entries) & (nodule_truth(entries) == 0) & (labels == 0)


def nodule_vs_normal(entries: Sequence[Entry]) -> np.ndarray:
    """(N,) bool: the films of the lung-cancer question, Nodule/Mass films (:func:`nodule_truth`)
    and normal films (:func:`nodule_normals`), status known (:func:`nodule_known`: label
    conflicts left out); the other abnormal films are not in it."""
    return (nodule_known(entries) & (nodule_truth(entries) == 1)) | nodule_normals(entries)
