"""Validation checks of a model file on altered copies of real validation films.

* **Film domain**: each validation film also passes through a digitised screen-film look
  (:func:`cxr_triage.training.film_look.screen_film`, seeded per film) before the shared
  preprocessing; the abnormal AUROC (per source) and the nodule/mass AUROC against normals
  on those copies are reported next to the plain films' (the aim: within 0.03).
* **Synthetic lesions**: the validation normals, plain and with one synthetic nodule or mass
  each (:func:`cxr_triage.training.lesions.insert_lesion`, seeded per film): the nodule/mass
  output's AUROC between the two copies, by lesion kind. A sanity check of what training
  learnt from synthetic lesions, never a figure about real nodules (those are the real
  Nodule/Mass films of the test report).

No figure here chooses anything: the model's thresholds come from real validation films.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cxr_triage.contract.model_file import INPUT_NAME, NODULE_OUTPUT, SCORE_OUTPUT
from cxr_triage.contract.preprocessing import preprocess
from cxr_triage.training.adapters import FIELD_MM
from cxr_triage.training.dataset import read_pixels
from cxr_triage.training.film_look import screen_film
from cxr_triage.training.lesions import insert_lesion
from cxr_triage.training.manifest import Entry, resolve
from cxr_triage.training.report_scoring import model_session
from cxr_triage.training.targets import nodule_truth, nodule_vs_normal
from cxr_triage.training.train_metrics import auroc

Alter = Callable[[np.ndarray, int], np.ndarray]


def _score(model: Path, entries: Sequence[Entry], root: Path, alter: Alter | None) -> dict[str, np.ndarray]:
    """score (N,) and nodule_score (N,) of the films, each altered by ``alter(film, i)`` first."""
    sess, meta = model_session(model)
    names = [n for n in (SCORE_OUTPUT, NODULE_OUTPUT) if n in {o.name for o in sess.get_outputs()}]
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, len(entries), 32):
        batch = []
        for i in range(start, min(start + 32, len(entries))):
            film = read_pixels(resolve(entries[i], root))
            batch.append(preprocess(alter(film, i) if alter else film, meta.preprocessing))
        for n, v in zip(names, sess.run(names, {INPUT_NAME: np.stack(batch).astype(np.float32)})):
            out[n].append(np.asarray(v, dtype=np.float64))
    return {n: np.concatenate(v) for n, v in out.items()}


def _figures(scores: dict[str, np.ndarray], entries: Sequence[Entry]) -> dict[str, Any]:
    """Abnormal AUROC pooled and per source; nodule/mass AUROC against normals."""
    y = np.array([e.label for e in entries])
    res: dict[str, Any] = {"auroc": auroc(scores[SCORE_OUTPUT], y), "by_source": {}}
    for src in sorted({e.source for e in entries}):
        idx = np.array([e.source == src for e in entries])
        if len(set(y[idx])) == 2:
            res["by_source"][src] = auroc(scores[SCORE_OUTPUT][idx], y[idx])
    if NODULE_OUTPUT in scores:
        use = nodule_vs_normal(entries)
        res["nodule_auroc_vs_normals"] = auroc(scores[NODULE_OUTPUT][use], nodule_truth(entries)[use])
    return res


def film_domain_check(model: str | Path, entries: Sequence[Entry], root: Path, seed: int = 0) -> dict[str, Any]:
    """Plain vs screen-film-look figures of ``model`` on validation films ``entries`` (module docstring)."""
    def look(film: np.ndarray, i: int) -> np.ndarray:
        return screen_film(film, np.random.default_rng([seed, i]))

    plain = _figures(_score(Path(model), entries, root, None), entries)
    film = _figures(_score(Path(model), entries, root, look), entries)
    return {"films": len(entries), "plain": plain, "screen_film": film,
            "auroc_change": film["auroc"] - plain["auroc"]}


def synthetic_lesion_check(model: str | Path, entries: Sequence[Entry], root: Path, seed: int = 0) -> dict[str, Any]:
    """Nodule/mass AUROC of ``model`` between the validation normals among ``entries`` and the
    same films with one synthetic lesion each, pooled and by kind (module docstring)."""
    normals = [e for e in entries if e.label == 0]
    kinds: list[str] = []

    def lesion(film: np.ndarray, i: int) -> np.ndarray:
        fmm = normals[i].extra.get(FIELD_MM, "")
        out, les = insert_lesion(film, np.random.default_rng([seed, i, 7]), float(fmm) if fmm else None)
        kinds.append(les.kind if les is not None else "none")
        return out

    plain = _score(Path(model), normals, root, None)
    if NODULE_OUTPUT not in plain:
        return {"note": "the model has no nodule/mass output"}
    altered = _score(Path(model), normals, root, lesion)
    res: dict[str, Any] = {"normals": len(normals)}
    for kind in ("nodule", "mass", "all"):
        idx = np.array([kind in ("all", k) for k in kinds])
        if idx.any():
            s = np.concatenate([plain[NODULE_OUTPUT], altered[NODULE_OUTPUT][idx]])
            y = np.r_[np.zeros(len(normals)), np.ones(int(idx.sum()))]
            res[kind] = {"films": int(idx.sum()), "nodule_auroc": auroc(s, y)}
    return res
