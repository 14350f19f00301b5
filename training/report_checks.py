"""The model checks of the test report (:mod:`cxr_triage.evaluation.model_checks`): the twin
test (the same film through two pipelines), the source probe on normals' features and, with
boxes of findings, the heatmap's pointing game.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from cxr_triage.evaluation import model_checks as mc
from cxr_triage.training.manifest import Entry, resolve


def twin_pairs(entries: Sequence[Entry], root: Path) -> list[tuple[int, int]]:
    """Index pairs (a, b) of films whose ``twin`` column (a path like ``file``) names the
    other (both in ``entries``)."""
    where = {str(resolve(e, root).resolve()): i for i, e in enumerate(entries)}
    pairs = []
    for i, e in enumerate(entries):
        twin = e.extra.get("twin", "")
        j = where.get(str((root / twin).resolve())) if twin else None
        if j is not None and i < j:
            pairs.append((i, j))
    return pairs


def model_checks(outputs: dict[str, np.ndarray], entries: Sequence[Entry], root: Path, threshold: float,
                 boxes: dict[str, list[Any]] | None = None, guess: Sequence[float] | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """Twin test, source probe and (with ``boxes``) pointing game of one model on these films
    (:mod:`cxr_triage.evaluation.model_checks`)."""
    out: dict[str, Any] = {}
    pairs = twin_pairs(entries, root)
    if pairs:
        a, b = zip(*pairs)
        first = {entries[i].source for i in a}
        out["twins"] = {**mc.twin_agreement(outputs["score"][list(a)], outputs["score"][list(b)], threshold),
                        "sources": sorted(first | {entries[i].source for i in b})}
    normals = [i for i, e in enumerate(entries) if e.label == 0]
    srcs = [entries[i].source or "unknown" for i in normals]
    if len(set(srcs)) > 1 and "features" in outputs:
        out["source_probe"] = mc.source_probe(outputs["features"][normals], srcs, seed=seed)
    if boxes:
        keys = [str(resolve(e, root).resolve()) for e in entries]
        idx, film_boxes = mc.boxes_for(keys, boxes)
        if idx and "heatmap" in outputs:
            sides = []
            for i in idx:
                with Image.open(resolve(entries[i], root)) as im:
                    sides.append(float(max(im.size)))
            if guess is None:  # no guess stored in the model: the best point for these films (favours the guess)
                guess = mc.best_fixed_point(mc.box_prior(film_boxes, sides, outputs["heatmap"].shape[1]))
            out["pointing_game"] = mc.pointing_game(outputs["heatmap"][idx], film_boxes, sides,
                                                    (float(guess[0]), float(guess[1])))
    return out
