"""Re-point a model file's nodule/mass flag by the share of validation normals it flags.

A model exported before issue 22 chose its nodule/mass flag for a target sensitivity
(``sens_0.9``), which flagged about half of all normal films. This command keeps the file's
weights and its in-graph calibration, scores the validation films it was calibrated on with the
report's pipeline (:func:`cxr_triage.training.report_scoring.model_outputs`: the worker's
reader and the model's own preprocessing) and stores the points of the new rule
(:func:`cxr_triage.training.val_calibration.flag_rate_points`): ``normals_0.1``,
``normals_0.15`` (the default) and ``normals_0.2``, plus ``nodule_flag_shown`` = the default
point catches at least :data:`calibrate.MIN_FLAG_SENSITIVITY` of the validation Nodule/Mass
films (otherwise consumers show the score without a flag). Only the ``cxr_triage`` metadata
JSON (:class:`cxr_triage.contract.model_file.ModelMetadata`) changes; the file's SHA-256
changes with it, so a site threshold commissioned for the old file no longer binds.

Films: the ``--split`` rows of ``--manifest`` (labels, Nodule/Mass status and label conflicts)
whose source is one of ``--sources``; ``--split-from`` takes the split column from another CSV
(by ``file``), e.g. the split the model was calibrated on::

    git show 88e0dfc:model/default_split.csv > /tmp/old_split.csv
    python -m cxr_triage.training.nodule_point --split-from /tmp/old_split.csv \\
        --write-manifest runs/old_split_labels.csv --out model/cxr_triage_effnet_lite0.onnx
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxr_triage.contract.files import file_sha256
from cxr_triage.contract.model_file import METADATA_KEY, ModelMetadata
from cxr_triage.contract.operating_points import flag_rate_point_name
from cxr_triage.paths import bundled_model_path, repo_root
from cxr_triage.training import calibrate
from cxr_triage.training.manifest import Entry, ManifestError, read_manifest, resolve, write_manifest
from cxr_triage.training.report_scoring import model_outputs, model_session
from cxr_triage.training.targets import nodule_known, nodule_normals, nodule_truth
from cxr_triage.training.train_metrics import auroc
from cxr_triage.training.val_calibration import flag_rate_points

#: the sources the bundled model was trained and calibrated on (rsna-normals never trained on)
SOURCES = ("nih-cxr14", "nih-extra", "rsna-pneumonia")


def resplit(entries: Sequence[Entry], split_from: Sequence[Entry]) -> list[Entry]:
    """``entries`` (labels as they are now) with the ``split`` of the same ``file`` in
    ``split_from``. Raises ManifestError when the two do not list the same films."""
    before = {e.file: e.split for e in split_from}
    missing = sorted({e.file for e in entries} ^ set(before))
    if missing:
        raise ManifestError(f"{len(missing)} film(s) are in only one of the two manifests, e.g. {missing[0]}")
    for e in entries:
        e.split = before[e.file]
    return list(entries)


def flag_films(entries: Sequence[Entry], split: str, sources: Sequence[str]) -> list[Entry]:
    """The films the flag is chosen on: ``split`` rows of ``sources`` whose nodule/mass status
    is known (:func:`cxr_triage.training.targets.nodule_known`: label conflicts left out)."""
    picked = [e for e in entries if e.split == split and e.source in sources]
    known = nodule_known(picked)
    return [e for e, k in zip(picked, known) if k]


def flag_points(nodule_scores: np.ndarray, entries: Sequence[Entry]) -> dict[str, Any]:
    """The new-rule nodule/mass points of scores (N,) on ``entries`` (known status): thresholds,
    the default point, whether the flag is shown, and the figures behind them."""
    truth = nodule_truth(entries)
    normal = nodule_normals(entries)
    use = normal | (truth == 1)
    points = flag_rate_points(nodule_scores, truth, normal)
    default = flag_rate_point_name(calibrate.DEFAULT_FLAG_RATE)
    return {"films": len(entries), "positive": int(truth.sum()), "normals": int(normal.sum()),
            "auroc": auroc(nodule_scores, truth), "auroc_vs_normals": auroc(nodule_scores[use], truth[use]),
            "flag_rate_points": points, "default_operating_point": default,
            "flag_shown": bool(points[default]["sensitivity"] >= calibrate.MIN_FLAG_SENSITIVITY),
            "flag_rule": f"default point flags <= {calibrate.DEFAULT_FLAG_RATE:g} of validation normals; flag "
                         f"shown only if it catches >= {calibrate.MIN_FLAG_SENSITIVITY:g} of validation "
                         "Nodule/Mass films"}


def repointed(meta: ModelMetadata, figures: dict[str, Any], provenance: dict[str, Any]) -> ModelMetadata:
    """``meta`` with the new points added to ``nodule_thresholds`` (the old ones kept), the
    default point and ``nodule_flag_shown`` set, the figures in
    ``validation_metrics["nodule"]["repointed"]`` and ``provenance`` in ``extra``."""
    meta.nodule_thresholds = {**meta.nodule_thresholds,
                              **{k: float(v["threshold"]) for k, v in figures["flag_rate_points"].items()}}
    meta.nodule_default_operating_point = figures["default_operating_point"]
    meta.nodule_flag_shown = figures["flag_shown"]
    nodule = dict(meta.validation_metrics.get("nodule") or {})
    nodule.update(flag_rate_points=figures["flag_rate_points"], default_operating_point=figures["default_operating_point"],
                  flag_shown=figures["flag_shown"], flag_rule=figures["flag_rule"], repointed=figures)
    meta.validation_metrics = {**meta.validation_metrics, "nodule": nodule}
    meta.extra = {**meta.extra, "nodule_repoint": provenance}
    return meta


def write_metadata(src: Path, meta: ModelMetadata, dst: Path) -> Path:
    """Write ``src`` (ONNX) to ``dst`` with its ``cxr_triage`` metadata replaced by ``meta``
    (other metadata keys and the graph unchanged); atomic (temp file + rename)."""
    import onnx  # onnx only when a file is rewritten (the scoring needs ONNX Runtime alone)

    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    onnx.helper.set_model_props(model, {**props, METADATA_KEY: meta.to_json()})
    tmp = dst.with_suffix(".tmp.onnx")
    onnx.save(model, str(tmp))
    tmp.replace(dst)
    return dst


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Score, choose the points, write ``args.out``; returns the figures (printed as JSON)."""
    model = Path(args.model or bundled_model_path())
    entries = read_manifest(args.manifest)
    if args.split_from:
        entries = resplit(entries, read_manifest(args.split_from))
    if args.write_manifest:
        write_manifest(entries, args.write_manifest)
    films = flag_films(entries, args.split, args.sources)
    if not films:
        raise ManifestError(f"no {args.split} films of {', '.join(args.sources)} with a known nodule/mass status")
    scores = model_outputs(model, [resolve(e, Path(args.data_root)) for e in films])["nodule_score"]
    figures = flag_points(scores, films)
    provenance = {"rule": figures["flag_rule"], "films": figures["films"], "split": args.split,
                  "sources": list(args.sources), "labels_manifest_sha256": file_sha256(args.manifest),
                  "split_from_sha256": file_sha256(args.split_from) if args.split_from else "",
                  "model_sha256_before": file_sha256(model),
                  "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "command": "python -m cxr_triage.training.nodule_point"}
    _, meta = model_session(model, threads=1)
    write_metadata(model, repointed(meta, figures, provenance), Path(args.out or model))
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cxr_triage.training.nodule_point", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", help="ONNX model file (default: the bundled model)")
    ap.add_argument("--manifest", default=str(repo_root() / "model" / "default_split.csv"),
                    help="manifest with the labels (and the split, unless --split-from)")
    ap.add_argument("--split-from", help="CSV whose split column to use (the split the model was calibrated on)")
    ap.add_argument("--split", default="val", help="the split whose films choose the points")
    ap.add_argument("--sources", nargs="+", default=list(SOURCES), help="sources of those films")
    ap.add_argument("--data-root", default="../shared/data", help="folder the manifest's files are relative to")
    ap.add_argument("--write-manifest", help="also write the manifest as used (labels with that split)")
    ap.add_argument("--out", help="model file to write (default: overwrite --model)")
    args = ap.parse_args(argv)
    try:
        figures = run(args)
    except (ManifestError, OSError, ValueError) as exc:
        print(f"nodule_point: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(figures, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
