"""Orientation from the pixels: how often the check (inference/orientation.py) picks each turn.

Validation films, none of them in the template's films (nih-extra): shared/data/nih-cxr14 (471),
the first ``--per-set`` of rsna-normals and rsna-pneumonia, each read by the project's reader
(``read_image_file``) and stored turned 0, 90, 180, 270 degrees counter-clockwise, plain and
mirrored left-right. For each stored turn: the share the check calls upright (scored as is), the
share refused as not upright, and the share of refusals that name the wrong turn, at the margin
and least match the node uses and at the others of ``--margins`` / ``--matches``. Prints one
JSON object.

    .venv/bin/python bench/orientation.py --per-set 500
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cxr_triage.inference.orientation import MIN_MARGIN, MIN_MATCH, turn_scores
from cxr_triage.inference.reader import read_image_file
from cxr_triage.paths import shared_data_dir


def validation_films(per_set: int) -> dict[str, list[Path]]:
    data = shared_data_dir()
    return {
        "nih-cxr14": sorted((data / "nih-cxr14" / "images").glob("*.png")),
        "rsna-normals": sorted((data / "rsna-normals" / "images").glob("*.png"))[:per_set],
        "rsna-pneumonia": sorted((data / "rsna-pneumonia" / "images").glob("*.jpg"))[:per_set],
    }


def scores_of(paths: list[Path]) -> np.ndarray:
    """(films, 2 mirror, 4 stored turns, 4 candidate turns) Pearson r."""
    out = np.zeros((len(paths), 2, 4, 4))
    for i, path in enumerate(paths):
        film = read_image_file(path)
        for m, base in enumerate((film, np.fliplr(film))):
            for stored in range(4):
                out[i, m, stored] = turn_scores(np.rot90(base, stored))
    return out


def confusion(scores: np.ndarray, margin: float, match: float) -> dict[str, dict[str, float]]:
    """Per stored turn (and mirror): shares called upright, refused, refused with a wrong turn."""
    best = scores.argmax(axis=-1)
    top = np.take_along_axis(scores, best[..., None], axis=-1)[..., 0]
    refused = (best != 0) & (top - scores[..., 0] >= margin) & (top >= match)
    rows = {}
    for m, mirrored in enumerate(("", "_mirrored")):
        for stored in range(4):
            right = (4 - stored) % 4
            ref = refused[:, m, stored]
            rows[f"stored_{90 * stored}{mirrored}"] = {
                "called_upright": round(float((~ref).mean()), 4),
                "refused_not_upright": round(float(ref.mean()), 4),
                "refused_naming_the_wrong_turn": round(float((ref & (best[:, m, stored] != right)).mean()), 4),
            }
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-set", type=int, default=500, help="films from each RSNA selection")
    ap.add_argument("--margins", default="0.1,0.2,0.3", help="margins to report beside the node's")
    ap.add_argument("--matches", default="0,0.4,0.5", help="least matches to report beside the node's")
    args = ap.parse_args()
    sets = validation_films(args.per_set)
    scores = np.concatenate([scores_of(paths) for paths in sets.values()])
    margins = sorted({MIN_MARGIN, *(float(m) for m in args.margins.split(","))})
    matches = sorted({MIN_MATCH, *(float(m) for m in args.matches.split(","))})
    print(json.dumps({
        "benchmark": "orientation", "films": {k: len(v) for k, v in sets.items()},
        "node_margin": MIN_MARGIN, "node_match": MIN_MATCH,
        "by_margin_and_match": {f"margin {m} match {t}": confusion(scores, m, t)
                                for m in margins for t in matches},
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
