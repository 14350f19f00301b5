"""``cxr-triage evaluate``: ground truth + (model | scores CSV | result SRs | a running node)
-> JSON and HTML report.

Thresholds always have a stated origin: the model's stored ones, a threshold file, fitted on
another labelled set (``--choose-on``), or fitted on the reported films themselves
(``--choose-on-eval``, flagged in red in the report). Overlap between the films thresholds were
fitted on and the reported films is checked by content hash and reported.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from cxr_triage.evaluation import analysis, report, sources, thresholds
from cxr_triage.evaluation.metrics import SENSITIVITY_TARGETS
from cxr_triage.evaluation.report import summary_lines
from cxr_triage.evaluation.sources import SourceError
from cxr_triage.paths import bundled_model_path


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def register(subparsers: Any, name: str, help_text: str) -> None:
    p = subparsers.add_parser(name, help=help_text, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", type=Path, help="CSV: file,label[,patient_id,source,age,sex,view,findings,nodule_or_mass,...] "
                   "(a 'site' column is read as 'source')")
    p.add_argument("--data-root", type=Path, help="folder the manifest's file paths are relative to (default: its folder)")
    p.add_argument("--allow-missing", action="store_true",
                   help="evaluate the films that are found when some are missing (default: stop, naming them)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="run this ONNX model on the films (the node's own pipeline)")
    src.add_argument("--scores", type=Path, help="scores CSV: file,score[,decision,reason,threshold,operating_point]")
    src.add_argument("--sr-dir", type=Path, help="folder of result SRs the node produced (manifest needs sop_instance_uid or study_instance_uid)")
    src.add_argument("--e2e", metavar="AE@HOST:PORT", help="send every film through a running node and evaluate the SRs it returns")
    thr = p.add_mutually_exclusive_group()
    thr.add_argument("--thresholds", type=Path, help="threshold file (JSON from --save-thresholds, or a `cxr-triage commission` site file)")
    thr.add_argument("--thresholds-model", type=Path, help="use the thresholds stored in this model")
    thr.add_argument("--choose-on", type=Path, metavar="MANIFEST", help="fit thresholds on this other labelled set")
    thr.add_argument("--choose-on-eval", action="store_true",
                     help="fit thresholds on the reported films themselves (optimistic; the report says so)")
    p.add_argument("--choose-scores", type=Path, help="scores CSV for --choose-on (default: run --model on it)")
    p.add_argument("--tuning-manifest", type=Path,
                   help="the films the model's stored thresholds were chosen on, to check overlap with the reported films")
    p.add_argument("--targets", type=_floats, default=[0.95, 0.98, 0.99], help="sensitivity targets to fit (default 0.95,0.98,0.99)")
    p.add_argument("--rule", choices=["point", "lower_bound"], default="point",
                   help="fit: sensitivity >= target (point) or its 95%% lower bound >= target")
    p.add_argument("--operating-point", help="primary operating point (default: the threshold source's default)")
    p.add_argument("--sweep-targets", type=_floats, default=list(SENSITIVITY_TARGETS))
    cmp_ = p.add_mutually_exclusive_group()
    cmp_.add_argument("--compare-scores", type=Path, help="paired comparison with another model's scores CSV")
    cmp_.add_argument("--compare-model", type=Path, help="paired comparison with another ONNX model")
    p.add_argument("--compare-name", default="", help="label of the compared model")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--title", default="")
    p.add_argument("--out", type=Path, required=True, help="output folder: report.json, report.html, scores.csv")
    p.add_argument("--save-thresholds", type=Path, help="write the thresholds used (with their provenance) here")
    p.add_argument("--screenshot", action="store_true", help="also write report_first_page.png (headless chromium)")
    p.add_argument("--verbose", action="store_true", help="keep the per-film log lines of the pipeline")
    e2e = p.add_argument_group("end-to-end (--e2e)")
    e2e.add_argument("--results-aet", default="EVALRESULTS", help="AE title of the local SR receiver")
    e2e.add_argument("--results-port", type=int, default=11119,
                     help="port of the local SR receiver: the node must deliver to AE@this-host:port")
    e2e.add_argument("--results-host", default="127.0.0.1", help="address the SR receiver listens on")
    e2e.add_argument("--e2e-model", type=Path,
                     help="the model the node runs, for the offline comparison (default: [inference] model_path or the bundled model)")
    e2e.add_argument("--calling-aet", default="EVALSCU")
    e2e.add_argument("--e2e-timeout", type=float, default=600.0, help="seconds to wait for all SRs")
    e2e.add_argument("--no-offline", action="store_true", help="end-to-end: skip the offline comparison run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Any) -> int:
    if not args.verbose:  # one log line per film drowns the summary
        logging.getLogger("cxr_triage.inference").setLevel(logging.WARNING)
    data_warnings: list[str] = []
    try:
        films = sources.read_manifest(args.manifest, args.data_root)
        if args.model or args.e2e:  # the pixels are read here: every film must be found
            films, data_warnings = sources.require_films(films, str(args.data_root or args.manifest.parent),
                                                         args.allow_missing)
        inputs: dict[str, Any] = {"manifest": str(args.manifest)}
        extra: dict[str, Any] = {}
        if args.model:
            info = sources.model_info(args.model)
            inputs["model"] = _model_inputs(info)
            inputs["source"] = {"kind": "model", "path": str(args.model)}
            scored = sources.scores_from_model(films, args.model, cfg, args.operating_point)
        elif args.scores:
            inputs["source"] = {"kind": "scores CSV", "path": str(args.scores)}
            scored = sources.read_scores_csv(args.scores, films)
        elif args.sr_dir:
            inputs["source"] = {"kind": "result SRs", "path": str(args.sr_dir)}
            scored = sources.scores_from_srs(films, sources.read_sr_folder(args.sr_dir))
        else:
            # start-up time: pynetdicom and the DICOM wrapping tools load for --e2e only
            from cxr_triage.evaluation import e2e

            inputs["source"] = {"kind": "end-to-end through a running node", "node": args.e2e}
            print(f"end-to-end: the node must deliver to {args.results_aet}@<this host>:{args.results_port}",
                  file=sys.stderr)
            run_e2e = e2e.run_end_to_end(
                films, args.e2e, results_aet=args.results_aet, results_port=args.results_port,
                results_host=args.results_host, calling_aet=args.calling_aet, timeout_s=args.e2e_timeout,
                work_dir=args.out / "e2e", cfg=cfg,
                offline_model=None if args.no_offline else (args.e2e_model or _cfg_model(cfg)),
            )
            scored = run_e2e.scored
            extra["end_to_end"] = run_e2e.summary()
        for line in sources.unassessable_lines(films, scored):
            print(f"cxr-triage evaluate: {line}", file=sys.stderr)
        sources.require_assessable(films, scored)
        ts = _resolve_thresholds(args, cfg, films, scored)
        compare, compare_name = None, args.compare_name
        if args.compare_scores:
            compare = sources.read_scores_csv(args.compare_scores, films)
            compare_name = compare_name or args.compare_scores.name
        elif args.compare_model:
            compare = sources.scores_from_model(films, args.compare_model, cfg)
            compare_name = compare_name or Path(args.compare_model).name
            inputs["compare_model"] = _model_inputs(sources.model_info(args.compare_model))
        if args.operating_point:
            ts.threshold(args.operating_point)  # KeyError with the list when unknown
            ts.default = args.operating_point
    except (SourceError, FileNotFoundError, KeyError, ValueError) as exc:
        print(f"cxr-triage evaluate: {exc}", file=sys.stderr)
        return 2

    rep = analysis.evaluate(
        films, scored, ts, title=args.title or f"cxr-triage evaluation: {args.manifest.name}",
        reported_name=str(args.manifest), inputs=inputs, compare=compare, compare_name=compare_name or "model B",
        targets=args.sweep_targets, n_boot=args.n_boot, seed=args.seed,
    )
    rep.update(extra)
    rep["warnings"] = [*data_warnings, *rep.get("warnings", [])]
    scored_model = inputs.get("model", {}).get("sha256")
    if ts.model_sha256 and scored_model and ts.model_sha256 != scored_model:
        rep["warnings"].append(f"the thresholds were made for another model file (sha256 {ts.model_sha256[:12]}) "
                               f"than the one evaluated ({scored_model[:12]})")
    if extra.get("end_to_end", {}).get("n_differ"):
        rep["warnings"].append(f"{extra['end_to_end']['n_differ']} film(s) got a different decision end-to-end than offline")
    paths = report.write_report(rep, args.out)
    sources.write_scores_csv(films, scored, args.out / "scores.csv")
    if args.save_thresholds:
        ts.save(args.save_thresholds)
    if args.screenshot:
        report.screenshot(paths["html"], args.out / "report_first_page.png")
    _print_summary(rep, paths)
    return 0


def _cfg_model(cfg: Any) -> Path:
    return Path(cfg.inference.model_path) if cfg.inference.model_path else bundled_model_path()


def _model_inputs(info: dict[str, Any]) -> dict[str, Any]:
    return {k: info[k] for k in ("path", "sha256", "name", "version")}


def _resolve_thresholds(args: argparse.Namespace, cfg: Any, films: Sequence[Any], scored: Sequence[Any]) -> Any:
    """The ThresholdSet to report with, from the one source the options name."""
    if args.thresholds:
        return thresholds.load_threshold_file(args.thresholds)
    if args.choose_on or args.choose_on_eval:
        if args.choose_on:
            tune = sources.read_manifest(args.choose_on)
            if args.choose_scores:
                tune_scored = sources.read_scores_csv(args.choose_scores, tune)
            elif args.model:
                tune_scored = sources.scores_from_model(tune, args.model, cfg)
            else:
                raise ValueError("--choose-on needs --choose-scores (or --model to score it)")
            name = str(args.choose_on)
        else:
            tune, tune_scored, name = list(films), list(scored), f"the reported films ({args.manifest})"
        keep = [s.assessable for s in tune_scored]  # an assessable film always has a score
        return thresholds.choose_thresholds(
            [f.label for f, k in zip(tune, keep) if k],
            [s.score for s, k in zip(tune_scored, keep) if k and s.score is not None],
            [f.key for f, k in zip(tune, keep) if k], targets=args.targets, rule=args.rule, chosen_on=name,
        )
    model = args.thresholds_model or args.model
    if model:
        meta = sources.model_info(model)["metadata"]
        keys = None
        if args.tuning_manifest:
            keys = [f.key for f in sources.read_manifest(args.tuning_manifest)]
        return thresholds.from_model_metadata(meta, chosen_on=str(args.tuning_manifest) if args.tuning_manifest else None,
                                              chosen_on_keys=keys)
    applied = {(s.operating_point, s.threshold) for s in scored if s.threshold is not None}
    if len(applied) == 1:
        (op, t), = applied
        return thresholds.ThresholdSet(thresholds={op or "as_applied": float(t)}, default=op or "as_applied",
                                       source="the threshold recorded with each result", rule="as applied",
                                       chosen_on="unknown (as applied by the system that produced the results)")
    raise ValueError("no thresholds: give --thresholds, --thresholds-model, --choose-on or --choose-on-eval")


def _print_summary(rep: dict[str, Any], paths: dict[str, Path]) -> None:
    """Per source first, then the pooled figures labelled as pooled (report.summary_lines)."""
    for line in summary_lines(rep):
        print(line)
    for w in rep["warnings"]:
        print(f"WARNING: {w}", file=sys.stderr)
    print(f"report: {paths['html']} and {paths['json']}")
