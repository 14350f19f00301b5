"""A localisation head trained on radiologists' boxes, and its pointing game against a fixed guess.

Why (issue 22, *Localisation*): the shipped heatmap, the abnormality output's class-activation
map, never beat a fixed guess on the RSNA opacity boxes (``model/MODEL_CARD.md``), so it is not
shown. This asks whether a head *trained to point* does, on the same model's features. Synthetic
lesions are not used as targets: the network hardly sees them (the card's synthetic-lesion
checks: nodules AUROC 0.51-0.53 against the same films plain, masses 0.57-0.66), so a head
trained on their masks would learn where they were put.

Steps (nothing is written into the model file; the JSON says whether the head would be shown):

1. each member's last feature map (the input of its class-activation ``Einsum``, (N, C, h, w),
   C = 1280 and h = w = 7 for EfficientNet-Lite0 at 224 px), the members side by side, through
   the report's pipeline (the worker's reader, the model's own preprocessing), for the films of
   the manifest's training, validation and (``--test``) test parts that have boxes;
2. cell targets: a cell is positive when its centre lies inside one of its film's boxes (the rule
   of :func:`cxr_triage.evaluation.model_checks.box_prior`, films squashed to a unit square); the
   training films' box prior gives the fixed guess (its most often covered cell);
3. an L2 logistic regression over the cells (scikit-learn, features standardised on the training
   cells, ``class_weight="balanced"``), for each ``C`` of :data:`C_GRID`, with and without the
   log box prior added to every cell's logit. The variant is chosen by the pointing hits of a
   5-fold cross-validation on the training films, grouped by patient (validation is not looked at
   for the choice);
4. the chosen head, refitted on all training films: its pointing game on validation
   (:func:`cxr_triage.evaluation.model_checks.pointing_game`: hit rates with Wilson intervals,
   exact McNemar test against the guess; ``beats_guess`` = more hits and p < 0.05), then on test
   with ``--test``; beside it, the same game for the file's own ``heatmap`` output (the shipped
   class-activation map) on the same films. A head is worth shipping only when it beats the
   guess on validation.

    python -m cxr_triage.training.localisation_head --model model/cxr_triage_effnet_lite0.onnx \\
        --manifest model/default_split.csv --data-root ../shared/data \\
        --boxes ../shared/data/rsna-pneumonia/boxes.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxr_triage.contract.model_file import HEATMAP_OUTPUT, INPUT_NAME
from cxr_triage.evaluation import model_checks as mc
from cxr_triage.training.heatmap import film_side
from cxr_triage.training.manifest import Entry, ManifestError, read_manifest, resolve
from cxr_triage.training.nodule_head import model_inputs, session_with_outputs

#: inverse L2 strengths tried (standardised cell features)
C_GRID = (1e-5, 1e-4, 1e-3, 1e-2)
#: folds of the training films' cross-validation that chooses the variant
FOLDS = 5
#: the box prior's floor before its log is added (a cell no training box covered)
PRIOR_FLOOR = 1e-3


class LocalisationError(ValueError):
    """Too few films with boxes, or a model file without a class-activation map."""


def map_session(model_path: Path, threads: int = 2) -> tuple[Any, list[str]]:
    """(ONNX Runtime session, output names): the model with each member's last feature map (the
    first input of its class-activation ``Einsum``) as an output. Raises LocalisationError when
    the file has no ``Einsum``."""
    import onnx

    try:
        model = onnx.load(str(model_path))
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is "not an ONNX file"
        raise LocalisationError(f"{model_path}: not an ONNX model ({type(exc).__name__})") from None
    names = [n.input[0] for n in model.graph.node if n.op_type == "Einsum"]
    if not names:
        raise LocalisationError(f"{model_path}: no class-activation Einsum: no feature map to localise from")
    return session_with_outputs(model, names, threads)


def feature_maps(session: tuple[Any, list[str]], inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((N, K*C, h, w) float32, (N, h, w) float32): the K members' last feature maps of the
    preprocessed ``inputs`` (N, 1, S, S) from a :func:`map_session`, and the file's own
    ``heatmap`` output for the same films."""
    sess, names = session
    maps, heat = [], []
    for i in range(0, len(inputs), 32):
        got = sess.run([*names, HEATMAP_OUTPUT], {INPUT_NAME: inputs[i:i + 32]})
        maps.append(np.concatenate(got[:-1], axis=1))
        heat.append(got[-1])
    return np.concatenate(maps).astype(np.float32), np.concatenate(heat).astype(np.float32)


def cell_targets(boxes: Sequence[Sequence[mc.Box]], sides: Sequence[float], grid: int) -> np.ndarray:
    """(N, grid, grid) bool: the cells whose centre lies inside one of each film's boxes."""
    return np.stack([mc.box_prior([b], [s], grid) > 0 for b, s in zip(boxes, sides)])


def _cells(maps: np.ndarray) -> np.ndarray:
    n, c, h, w = maps.shape
    return maps.transpose(0, 2, 3, 1).reshape(n * h * w, c)


def fit_head(maps: np.ndarray, targets: np.ndarray, c: float) -> Any:
    """A fitted cell classifier (scikit-learn pipeline: standardise, L2 logistic regression,
    class-balanced) of ``maps`` (N, C, h, w) against ``targets`` (N, h, w)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000, class_weight="balanced"))
    return clf.fit(_cells(maps), targets.reshape(-1))


def head_maps(clf: Any, maps: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
    """(N, h, w): the head's cell logits, plus log(``prior``) (floored at :data:`PRIOR_FLOOR`)
    when given."""
    n, _, h, w = maps.shape
    z = clf.decision_function(_cells(maps)).reshape(n, h, w)
    return z + np.log(np.clip(prior, PRIOR_FLOOR, None)) if prior is not None else z


def choose_variant(maps: np.ndarray, targets: np.ndarray, boxes: Sequence[Sequence[mc.Box]],
                   sides: Sequence[float], groups: Sequence[str], grid: Sequence[float] = C_GRID,
                   folds: int = FOLDS) -> dict[str, Any]:
    """The (C, with prior) with the most pointing hits in a ``folds``-fold cross-validation of the
    training films grouped by patient (each fold's prior and guess from the other folds):
    {C, prior, hits, guess_hits, films, by_variant}."""
    from sklearn.model_selection import GroupKFold

    n_grid = maps.shape[-1]
    splits = []   # (fitted films, held-out films, the fitted films' box prior), the same for every C
    guess_hits = 0
    for fit_ix, held_ix in GroupKFold(min(folds, len(set(groups)))).split(maps, groups=list(groups)):
        prior = mc.box_prior([boxes[i] for i in fit_ix], [sides[i] for i in fit_ix], n_grid)
        held_boxes, held_sides = [boxes[i] for i in held_ix], [sides[i] for i in held_ix]
        guess_hits += int(mc.fixed_point_hits(mc.best_fixed_point(prior), held_boxes, held_sides).sum())
        splits.append((fit_ix, held_ix, prior))
    by_variant: dict[str, dict[str, int]] = {}
    best: dict[str, Any] = {}
    for c in grid:
        hits = {False: 0, True: 0}
        for fit_ix, held_ix, prior in splits:
            z = head_maps(fit_head(maps[fit_ix], targets[fit_ix], c), maps[held_ix])
            held_boxes, held_sides = [boxes[i] for i in held_ix], [sides[i] for i in held_ix]
            for with_prior in (False, True):
                zz = z + np.log(np.clip(prior, PRIOR_FLOOR, None)) if with_prior else z
                hits[with_prior] += int(mc.pointing_hits(zz, held_boxes, held_sides).sum())
        for with_prior in (False, True):
            by_variant[f"C={c:g}{' + prior' if with_prior else ''}"] = {"hits": hits[with_prior]}
            if not best or hits[with_prior] > best["hits"]:
                best = {"C": c, "prior": with_prior, "hits": hits[with_prior]}
    return {**best, "guess_hits": guess_hits, "films": len(maps), "by_variant": by_variant}


def evaluate(model: Path, manifest: Path, data_root: Path, box_csvs: Sequence[Path], test: bool = False,
             threads: int = 2) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; returns the figures (JSON-ready): ``films_with_boxes``
    per part, ``grid``, ``chosen_by_training_cv`` (C, prior, hits and the guess's hits of the
    cross-validation, every variant's hits), per evaluated part (``val``, ``test``) the pointing
    game of the ``trained_head`` and of the file's own ``model_heatmap``
    (:func:`cxr_triage.evaluation.model_checks.pointing_game`; ``heatmap_hit_rate`` is the map's,
    ``fixed_guess_hit_rate`` the guess's), and ``shown`` (the trained head beats the guess on
    validation). Raises LocalisationError (too few films with boxes, a CSV that is not a boxes
    CSV, a file that is not a model of this project) and ManifestError."""
    boxes: dict[str, list[mc.Box]] = {}
    for csv_path in box_csvs:
        try:
            in_csv = mc.read_boxes(csv_path)
        except (KeyError, ValueError) as exc:
            raise LocalisationError(f"{csv_path}: not a boxes CSV (file,x,y,width,height): {exc!r}") from None
        for film, listed in in_csv.items():
            boxes.setdefault(film, []).extend(listed)
    entries = read_manifest(manifest)

    def boxed(split: str) -> list[Entry]:
        return [e for e in entries if e.split == split and str(resolve(e, data_root).resolve()) in boxes]

    parts = {s: boxed(s) for s in ("train", "val") + (("test",) if test else ())}
    if len(parts["train"]) < 2 * FOLDS or not parts["val"]:
        hint = (f": no film of the manifest, resolved under --data-root {data_root}, has a box in the CSVs"
                f" (check --data-root and --boxes)" if not parts["train"] and not parts["val"] else "")
        raise LocalisationError(f"films with boxes: {len(parts['train'])} training (at least {2 * FOLDS} needed),"
                                f" {len(parts['val'])} validation{hint}")
    session = map_session(model, threads)
    data: dict[str, dict[str, Any]] = {}
    for split, films in parts.items():
        paths = [resolve(e, data_root) for e in films]
        film_boxes = [boxes[str(p.resolve())] for p in paths]
        sides = [film_side(p) for p in paths]
        maps, heat = feature_maps(session, model_inputs(model, paths))
        data[split] = {"maps": maps, "heatmap": heat, "boxes": film_boxes, "sides": sides,
                       "targets": cell_targets(film_boxes, sides, maps.shape[-1]),
                       "groups": [e.patient_id or e.file for e in films]}
    tr = data["train"]
    choice = choose_variant(tr["maps"], tr["targets"], tr["boxes"], tr["sides"], tr["groups"])
    clf = fit_head(tr["maps"], tr["targets"], choice["C"])
    prior = mc.box_prior(tr["boxes"], tr["sides"], tr["maps"].shape[-1])
    guess = mc.best_fixed_point(prior)
    out: dict[str, Any] = {"model": str(model), "boxes": [str(p) for p in box_csvs],
                           "films_with_boxes": {s: len(f) for s, f in parts.items()},
                           "grid": int(tr["maps"].shape[-1]), "chosen_by_training_cv": choice}
    for split in parts:
        if split == "train":
            continue
        d = data[split]
        z = head_maps(clf, d["maps"], prior if choice["prior"] else None)
        out[split] = {"trained_head": mc.pointing_game(z, d["boxes"], d["sides"], guess),
                      "model_heatmap": mc.pointing_game(d["heatmap"], d["boxes"], d["sides"], guess)}
    out["shown"] = bool(out["val"]["trained_head"]["beats_guess"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cxr_triage.training.localisation_head",
                                 description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--model", required=True, help="ONNX model file of this project")
    ap.add_argument("--manifest", required=True, help="manifest with the split (patient_id groups the folds)")
    ap.add_argument("--data-root", default="../shared/data",
                    help="folder the manifest's files are relative to (default: ../shared/data)")
    ap.add_argument("--boxes", nargs="+", required=True, type=Path,
                    help="one or more file,x,y,width,height CSVs, each film path relative to its CSV's folder, "
                         "e.g. ../shared/data/rsna-pneumonia/boxes.csv (the boxes of one film are pooled)")
    ap.add_argument("--test", action="store_true", help="also the test part's pointing game (after the choice)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default: 2)")
    ap.add_argument("--out", type=Path, help="also write the JSON here (its folder is made)")
    args = ap.parse_args(argv)
    try:
        figures = evaluate(Path(args.model), Path(args.manifest), Path(args.data_root), args.boxes,
                           args.test, args.threads)
    except (LocalisationError, ManifestError, OSError, ValueError) as exc:
        print(f"localisation_head: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(figures, indent=1, default=float)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
