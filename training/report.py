"""``cxr-triage report``: the test report of a model on a manifest's own films, with 95% CIs.

Scores the ONNX file with ONNX Runtime exactly as the worker does (reader -> preprocess with
the spec stored in the model -> ``score``), at the thresholds stored in the model (chosen on
the validation split; nothing here is tuned), plus a commissioned site threshold when given.

The headline is the manifest's own sources (every source in the split, or the ones named by
``headline_sources``); then one block per source, per view and per source x view: AUROC,
and at each operating point the sensitivity and the share of normal films called likely
normal. A model that learned the source instead of the lungs shows it here (one source's
normals all suspicious), as does one that learned "AP = abnormal" (per view).

With ``compare`` (a second ONNX model) the same films are scored by both and compared paired:
AUROC difference with a patient-level paired bootstrap CI (and DeLong), overall and per
source, and the share of films called likely normal at equal sensitivity.

Statistics are :mod:`cxr_triage.evaluation.metrics`: AUROC with a patient-level bootstrap
percentile interval (2,000 resamples; each film its own patient without ``patient_id``),
proportions with Wilson intervals. Output: JSON (the numbers), HTML (the same as tables),
``<stem>.scores.csv`` (file, source, view, label, score[, score of the compared model]) and a
terminal summary.

    cxr-triage report --model site1.onnx --manifest runs/site1/split.csv --out runs/site1/report
    cxr-triage report --model site1.onnx --manifest runs/site1/split.csv --compare bundled.onnx
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxr_triage.contract.manifest import ManifestError
from cxr_triage.contract.model_file import ModelMetadata
from cxr_triage.evaluation.model_checks import read_boxes
from cxr_triage.inference.site_threshold import SiteThresholdError, check_matches_model
from cxr_triage.paths import bundled_model_path, repo_root, shared_data_dir
from cxr_triage.training.manifest import Entry, read_manifest, resolve
from cxr_triage.training.report_checks import model_checks
from cxr_triage.training.report_figures import build_report, nodule_block, nodule_comparison
from cxr_triage.training.report_render import markdown, terminal_summary, write_report
from cxr_triage.training.report_scoring import (
    ReportError,
    check_films,
    gate_bypass,
    model_identity,
    model_outputs,
    model_session,
)

__all__ = ["ReportError", "add_arguments", "build_report", "markdown", "run", "terminal_summary", "test_report",
           "write_report"]


def test_report(model_path: str | Path, manifest: str | Path, data_root: str | Path | None = None,
                out: str | Path | None = None, split: str = "test", *,
                headline_sources: Sequence[str] | None = None, compare: str | Path | None = None,
                site_threshold: str | Path | None = None, n_boot: int = 2000, seed: int = 0,
                boxes: str | Path | None = None) -> dict[str, Any]:
    """Score ``split`` of ``manifest`` (``"all"``: every film) with the model (and ``compare``)
    and return :func:`build_report`'s dict; written to ``out`` (JSON path: HTML and scores CSV
    beside it) when given. ``data_root`` default: the manifest's folder. The report adds the
    nodule/mass output's figures (when the model has one) and the model checks
    (:func:`model_checks`: twins, source probe, and the heatmap's pointing game when ``boxes``
    is given, a ``file,x,y,width,height`` CSV, files relative to its own folder).

    Raises ReportError (missing or unreadable films named, empty split, bad model file) and
    ManifestError (bad manifest)."""
    manifest = Path(manifest)
    root = Path(data_root) if data_root else manifest.resolve().parent
    entries = split_entries(manifest, split)
    check_films(entries, root)
    ident = model_identity(model_path)
    thresholds = dict(ident["thresholds"])
    if site_threshold:
        site = check_matches_model(site_threshold, model_path)
        thresholds[site.operating_point] = float(site.threshold)
    paths = [resolve(e, root) for e in entries]
    gate_refusals: dict[str, int] = {}
    outputs = model_outputs(model_path, paths, gate_refusals=gate_refusals)
    scores = outputs["score"]
    b = ident_b = None
    out_b: dict[str, np.ndarray] = {}
    if compare:
        ident_b = model_identity(compare)
        out_b = model_outputs(compare, paths)
        b = out_b["score"]
    rep = build_report(scores, entries, thresholds, model=f"{ident['name']} {ident['version']}", split=split,
                       manifest=str(manifest), headline_sources=headline_sources, compare=b,
                       compare_model=f"{ident_b['name']} {ident_b['version']} ({compare})" if ident_b else "",
                       compare_thresholds=ident_b["thresholds"] if ident_b else None, n_boot=n_boot, seed=seed)
    rep["model_file"] = {k: ident[k] for k in ("path", "sha256", "name", "version")}
    rep["intended_use_gate"] = {"applied": False, "why": gate_bypass(e.source for e in entries), "films": len(paths),
                                "the_gate_would_refuse": dict(sorted(gate_refusals.items()))}
    _, meta = model_session(model_path, threads=1)
    box_map = read_boxes(boxes) if boxes else None
    default_t = thresholds.get(meta.default_operating_point, next(iter(thresholds.values()), 0.5))
    if "nodule_score" in outputs:
        rep["nodule"] = nodule_block(outputs["nodule_score"], entries, dict(meta.nodule_thresholds),
                                     rep["headline_sources"], n_boot, seed)
    rep["checks"] = model_checks(outputs, entries, root, default_t, box_map, _guess(meta), seed)
    rep["heatmap_validated_in_model"] = bool(meta.heatmap_validated)
    if compare and ident_b:
        _, meta_b = model_session(compare, threads=1)
        rep["compare_model_file"] = {k: ident_b[k] for k in ("path", "sha256", "name", "version")}
        rep["compare_checks"] = model_checks(out_b, entries, root,
                                             ident_b["thresholds"].get(meta_b.default_operating_point, 0.5),
                                             box_map, _guess(meta_b), seed)
        if "nodule_score" in out_b:
            rep["compare_nodule"] = nodule_block(out_b["nodule_score"], entries, dict(meta_b.nodule_thresholds),
                                                 rep["headline_sources"], n_boot, seed)
            if "nodule_score" in outputs:
                rep["nodule_comparison"] = nodule_comparison(outputs["nodule_score"], out_b["nodule_score"], entries,
                                                             rep["headline_sources"], n_boot, seed)
    if out:
        write_report(rep, out, entries, scores, b)
    return rep


def split_entries(manifest: Path, split: str) -> list[Entry]:
    """The films of ``split`` in ``manifest`` (``"all"``: every film).

    Raises ReportError naming the manifest's splits when there are none."""
    rows = read_manifest(manifest)
    entries = [e for e in rows if split == "all" or e.split == split]
    if not entries:
        splits = sorted({e.split or "(none)" for e in rows})
        raise ReportError(f"{manifest}: no films in split {split!r} (its splits: {', '.join(splits)}; "
                          "give --split, or --split all for every film)")
    return entries


def _guess(meta: ModelMetadata) -> Any:
    """The heatmap's fixed guess point stored in the model (None when not stored)."""
    return (meta.extra.get("heatmap") or {}).get("guess_point")


# ---------------------------------------------------------------- command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``cxr-triage report`` (also ``python -m cxr_triage.training.report``)."""
    p.add_argument("--model", help="ONNX model file to report on (default: the bundled model)")
    p.add_argument("--manifest", help="manifest CSV with a split column, e.g. <run>/split.csv "
                   "(default: the bundled model's model/default_split.csv)")
    p.add_argument("--data-root", "--data", dest="data_root",
                   help="folder the manifest's file paths are relative to (default: the manifest's folder; "
                        "the shared data for the bundled split)")
    p.add_argument("--split", default="test", help="split to report on ('all': every film)")
    p.add_argument("--headline-sources", nargs="*", default=None, metavar="SOURCE",
                   help="sources of the headline figures (default: every source in the split)")
    p.add_argument("--compare", metavar="MODEL", help="second ONNX model: paired comparison on the same films")
    p.add_argument("--site-threshold", metavar="FILE",
                   help="`cxr-triage commission` file of this model: report its operating point too")
    p.add_argument("--boxes", metavar="CSV", help="file,x,y,width,height boxes of findings: the heatmap's pointing "
                   "game (default for the bundled split: the shared RSNA opacity boxes)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for the AUROC CIs")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--out", help="JSON report to write (HTML and scores CSV beside it); a folder gets "
                   "test_report.json")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables instead of the summary")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the summary")


def run(args: argparse.Namespace, cfg: Any = None) -> int:
    """``cxr-triage report``: exit 0, or 2 with one line on stderr."""
    model = args.model or bundled_model_path()
    manifest = args.manifest
    data_root = args.data_root
    headline = args.headline_sources
    default_split = repo_root() / "model" / "default_split.csv"
    if manifest is None or Path(manifest).resolve() == default_split.resolve():
        # the bundled model's split: its model card's headline is the NIH films
        manifest = default_split
        headline = headline or ["nih-cxr14", "nih-extra", "rsna-pneumonia"]
        if data_root is None:
            try:
                data_root = shared_data_dir()
            except FileNotFoundError as exc:
                print(f"cxr-triage report: {exc}", file=sys.stderr)
                return 2
        if args.boxes is None and (Path(data_root) / "rsna-pneumonia" / "boxes.csv").exists():
            args.boxes = str(Path(data_root) / "rsna-pneumonia" / "boxes.csv")
    try:
        rep = test_report(model, manifest, data_root, args.out, args.split,
                          headline_sources=headline, compare=args.compare,
                          site_threshold=args.site_threshold, n_boot=args.n_boot, seed=args.seed,
                          boxes=args.boxes)
    except (ReportError, ManifestError, SiteThresholdError, OSError) as exc:
        print(f"cxr-triage report: {exc}", file=sys.stderr)
        return 2
    if args.markdown:
        print(markdown(rep))
    elif args.json:
        print(json.dumps(rep, indent=1))
    else:
        print(terminal_summary(rep))
        if args.out:
            out = Path(args.out)
            out = out if out.suffix == ".json" else (out / "test_report.json" if not out.suffix else out.with_suffix(".json"))
            print(f"report: {out} and {out.with_suffix('.html')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cxr_triage.training.report", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
