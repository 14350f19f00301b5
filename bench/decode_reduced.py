"""JPEG 2000 at a reduced resolution: does the bundled model score the film the same?

``read_film(..., floor=WORKER_FLOOR)`` decodes a JPEG 2000 film with resolution levels left out
(``inference/resolution.py``). This scores real films both ways through the worker's pipeline
(``Triager.triage_dataset``: gate, preprocessing, the bundled model, the default operating
point) and reports the largest score difference and whether the decisions (and nodule/mass
flags) agree; beside it, as the model's own sensitivity to a change of no clinical meaning, the
score difference between the full film and the same film with one pixel cut off each edge. The films: real NIH films from the shared data (512 px) upscaled to detector
sizes with mild noise (``_common.detector_film``), 16-bit, JPEG 2000 Lossless (``png_to_dicom``),
in turn at 2500 x 2048, 2048 x 2048, 3000 x 2500 (one level left out) and 4280 x 3520 (two);
plus pydicom-data's real CR chest film RG1_J2KR (JPEG 2000 Lossless as the vendor wrote it)
when installed. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import time
from typing import Any

import _common as C
import numpy as np

#: (rows, cols) of the upscaled films, in turn
SIZES = ((2500, 2048), (2048, 2048), (3000, 2500), (4280, 3520))


def _films(n: int):
    """(name, dataset) of ``n`` upscaled NIH films encoded as JPEG 2000 Lossless, then RG1."""
    from pydicom import dcmread
    from pydicom.uid import JPEG2000Lossless

    from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom

    for i, png in enumerate(C.shared_pngs(n)):
        rows, cols = SIZES[i % len(SIZES)]
        film = C.detector_film(png, rows, cols, seed=i)
        yield png.name, png_to_dicom(film, sop_class="DX_PRES", transfer_syntax_uid=JPEG2000Lossless,
                                     bits_stored=16, patient_id=f"J2K{i:04d}")
    try:
        from pydicom.data import get_testdata_file

        path = get_testdata_file("RG1_J2KR.dcm")
    except (ImportError, OSError, ValueError):  # pydicom-data not installed: NIH films only
        path = None
    if path:
        yield "RG1_J2KR.dcm", dcmread(path)


def _crop_score(triager, result) -> float | None:
    """The score of ``result``'s film with one pixel cut off each edge (None: not scored)."""
    from cxr_triage.contract.preprocessing import preprocess

    if result.score is None or result.pixels is None:
        return None
    tensor = preprocess(result.pixels[1:-1, 1:-1], triager.spec)
    return float(triager.scorer.score(tensor[None]).scores[0])


def _compare(full, reduced) -> dict[str, Any]:
    return {"full": full.score, "reduced": reduced.score,
            "decision_full": full.decision.value, "decision_reduced": reduced.decision.value,
            "nodule_full": full.nodule_score, "nodule_reduced": reduced.nodule_score,
            "flag_full": full.nodule_flag, "flag_reduced": reduced.nodule_flag}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="NIH films to score both ways")
    args = ap.parse_args()
    from cxr_triage.inference import pipeline
    from cxr_triage.inference.reader import read_film
    from cxr_triage.inference.resolution import WORKER_FLOOR

    triager = pipeline.Triager(threads=1, keep_pixels=True)
    reduced_read = functools.partial(read_film, floor=WORKER_FLOOR)
    rows, seconds = [], {"full": 0.0, "reduced": 0.0}
    for name, ds in _films(args.n):
        results = {}
        for mode, reader in (("full", read_film), ("reduced", reduced_read)):
            pipeline.read_film = reader  # the worker's path with one reader or the other
            start = time.perf_counter()
            results[mode] = triager.triage_dataset(ds.copy(), source=name)
            seconds[mode] += time.perf_counter() - start
        pipeline.read_film = read_film
        row = _compare(results["full"], results["reduced"])
        row["cropped"] = _crop_score(triager, results["full"])
        row.update(film=name, size=f"{ds.Rows}x{ds.Columns}")
        rows.append(row)
        if len(rows) % 20 == 0:
            C.note(f"decode_reduced: {len(rows)} films")
    scored = [r for r in rows if r["full"] is not None and r["reduced"] is not None]
    diffs = np.array([abs(r["full"] - r["reduced"]) for r in scored])
    nod = np.array([abs(r["nodule_full"] - r["nodule_reduced"]) for r in scored
                    if r["nodule_full"] is not None and r["nodule_reduced"] is not None])
    crop = np.array([abs(r["full"] - r["cropped"]) for r in scored if r["cropped"] is not None])
    by_size: dict[str, float] = {}
    for r, d in zip(scored, diffs):
        by_size[r["size"]] = max(by_size.get(r["size"], 0.0), float(d))
    C.emit({"benchmark": "decode_reduced", "floor": list(WORKER_FLOOR), "films": len(rows),
            "scored_both": len(scored),
            "refused_differently": [r["film"] for r in rows if r["decision_full"] != r["decision_reduced"]
                                    and "not_assessable" in (r["decision_full"], r["decision_reduced"])],
            "score_abs_diff_max": float(diffs.max()) if diffs.size else None,
            "score_abs_diff_p99": float(np.percentile(diffs, 99)) if diffs.size else None,
            "score_abs_diff_mean": float(diffs.mean()) if diffs.size else None,
            "score_abs_diff_max_by_size": by_size,
            "crop_1px_abs_diff_max": float(crop.max()) if crop.size else None,
            "crop_1px_abs_diff_mean": float(crop.mean()) if crop.size else None,
            "decisions_agree": sum(r["decision_full"] == r["decision_reduced"] for r in rows),
            "threshold": triager.threshold, "operating_point": triager.operating_point,
            "nearest_to_threshold": float(min(abs(r["full"] - triager.threshold) for r in scored)) if scored else None,
            "nodule_abs_diff_max": float(nod.max()) if nod.size else None,
            "nodule_flags_agree": sum(r["flag_full"] == r["flag_reduced"] for r in rows),
            "triage_seconds": {k: round(v, 1) for k, v in seconds.items()},
            "rows": rows, "machine": C.machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
