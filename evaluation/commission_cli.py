"""``cxr-triage commission`` and ``cxr-triage reconcile``: a site's own operating point, and
live results checked against its radiologists."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cxr_triage.config import resolve_path
from cxr_triage.contract.manifest import NEGATIVE_SPELLINGS, POSITIVE_SPELLINGS
from cxr_triage.paths import bundled_model_path

EXIT_INSUFFICIENT = 3


def register(subparsers: Any, name: str, help_text: str) -> None:
    if name == "commission":
        p = subparsers.add_parser(
            name, help=help_text,
            description="Choose the highest threshold whose sensitivity lower 95% confidence bound "
                        "meets the target on this site's labelled films, and write a site threshold "
                        "file bound to the model file's SHA-256 (set it as [inference] site_threshold_file).")
        p.add_argument("--manifest", required=True, type=Path,
                       help="labelled films: CSV file,label[,patient_id,source,...]; with --srs it needs a "
                            "sop_instance_uid or study_instance_uid column")
        p.add_argument("--data-root", type=Path,
                       help="folder the manifest's file paths are relative to (default: its folder)")
        p.add_argument("--allow-missing", action="store_true",
                       help="commission on the films that are found when some are missing (default: stop, naming them)")
        p.add_argument("--verbose", action="store_true", help="keep the per-film log lines of the pipeline")
        src = p.add_mutually_exclusive_group()
        src.add_argument("--scores", type=Path, help="precomputed scores CSV (file,score[,decision,reason])")
        src.add_argument("--srs", type=Path, help="folder of result SRs the node produced for these films")
        p.add_argument("--model", type=Path, help="ONNX model (default: [inference] model_path or the bundled "
                                                  "model); the file is bound by SHA-256")
        p.add_argument("--site", required=True, help="site name recorded in the file")
        p.add_argument("--target", type=float, default=0.98, help="sensitivity target for the lower bound (0.98)")
        p.add_argument("--confidence", type=float, default=0.95, help="two-sided confidence level (0.95)")
        p.add_argument("--interval", choices=("exact", "wilson"), default="exact",
                       help="exact = Clopper-Pearson (default, conservative) or Wilson")
        p.add_argument("--also-targets", default="0.95,0.99", metavar="LIST",
                       help="comma-separated further targets recorded as evidence (default 0.95,0.99; '' for none)")
        p.add_argument("--min-set-aside", type=float, default=0.05, metavar="SHARE",
                       help="refuse (exit 3, nothing written) a threshold that calls fewer than this share of "
                            "the normal films likely normal: it would flag (nearly) every study (0.05)")
        p.add_argument("--accept-no-savings", action="store_true",
                       help="write such a threshold anyway (the node then calls (nearly) every study suspicious)")
        p.add_argument("--out", required=True, type=Path, help="site threshold file to write (JSON)")
        p.set_defaults(func=run_commission)
    elif name == "reconcile":
        p = subparsers.add_parser(
            name, help=help_text,
            description="Join radiologist outcomes (CSV keyed by study_instance_uid, sop_instance_uid or "
                        "accession number, with label) with the node's results; report live sensitivity, specificity and "
                        "workload saved with Wilson CIs, daily drift, and export the discordant films.")
        p.add_argument("--outcomes", type=Path,
                       help="CSV: study_instance_uid, sop_instance_uid or accession_number, and label "
                            "(--accession-column, --label-column and --abnormal-values/--normal-values "
                            "name the site's own)")
        p.add_argument("--accession-column", default="accession_number", metavar="NAME",
                       help="the outcomes CSV's accession number column (default accession_number); used when "
                            "it has no study_instance_uid / sop_instance_uid column")
        p.add_argument("--label-column", default="label", metavar="NAME",
                       help="the outcomes CSV's label column (default label)")
        p.add_argument("--abnormal-values", nargs="*", default=[], metavar="VALUE",
                       help="the site's spellings of abnormal in --label-column, as `manifest` reads them "
                            f"(default: {'/'.join(POSITIVE_SPELLINGS)})")
        p.add_argument("--normal-values", nargs="*", default=[], metavar="VALUE",
                       help=f"the site's spellings of normal (default: {'/'.join(NEGATIVE_SPELLINGS)})")
        p.add_argument("--feedback", action="store_true",
                       help="use the radiologists' accept/reject feedback kept by the worklist (job store) as "
                            "study outcomes (a rejection is discordant); --outcomes rows win where both exist")
        p.add_argument("--srs", type=Path, help="folder of result SRs (default: the node's job store)")
        p.add_argument("--store", type=Path, help="the node's queue.sqlite3 (default: <[node] state_dir>/queue.sqlite3)")
        p.add_argument("--since", help="first UTC day (YYYY-MM-DD), store only")
        p.add_argument("--until", help="last UTC day (YYYY-MM-DD, inclusive), store only")
        p.add_argument("--out", type=Path, help="write the full report as JSON")
        p.add_argument("--discordant", type=Path, help="write discordant films as a retraining manifest CSV")
        p.set_defaults(func=run_reconcile)
    else:  # pragma: no cover - cli.SUBCOMMANDS maps only the two names here
        raise ValueError(name)


def _model_path(args: argparse.Namespace, cfg: Any) -> Path:
    if args.model:
        return args.model
    return resolve_path(cfg, cfg.inference.model_path) if cfg.inference.model_path else bundled_model_path()


def _check_sr_model(parsed: list[Any], model: Path) -> None:
    """The SRs' scores must come from the model the file will be bound to: refuse SRs written
    by another model name/version (the SR records both)."""
    # start-up time, here and in the two commands below: `commission --help` and `reconcile
    # --help` load no ONNX Runtime, scipy or job store (this module registers both commands)
    from cxr_triage.evaluation.sources import model_info

    meta = model_info(model)["metadata"]
    other = sorted({f"{p.model_name} {p.model_version}" for p in parsed
                    if (p.model_name, p.model_version) != (meta.name, meta.version)})
    if other:
        raise ValueError(f"the SRs were produced by {', '.join(other)}, not by {meta.name} {meta.version} "
                         f"({model}): commission with the model that scored them")


def run_commission(args: argparse.Namespace, cfg: Any) -> int:
    import logging

    from cxr_triage.evaluation import sources
    from cxr_triage.evaluation.commission import InsufficientEvidence, commission
    from cxr_triage.inference.site_threshold import write_site_threshold

    if not args.verbose:  # one log line per film (and per stage) drowns the result
        for name in ("cxr_triage.inference", "cxr_triage.evaluation"):
            logging.getLogger(name).setLevel(logging.WARNING)
    model = _model_path(args, cfg)
    if not model.is_file():
        print(f"cxr-triage commission: model file not found: {model}", file=sys.stderr)
        return 2
    films: list[Any] = []
    scored: list[Any] = []
    try:
        also = [float(x) for x in args.also_targets.split(",") if x.strip()]
        films = sources.read_manifest(args.manifest, args.data_root)
        if not args.scores and not args.srs:  # the pixels are read: every film must be found
            films, warnings = sources.require_films(films, str(args.data_root or args.manifest.parent),
                                                    args.allow_missing)
            for line in warnings:
                print(f"cxr-triage commission: {line}", file=sys.stderr)
        if args.scores:
            scored = sources.read_scores_csv(args.scores, films)
            inputs = [args.manifest, args.scores]
        elif args.srs:
            parsed = sources.read_sr_folder(args.srs)
            _check_sr_model(parsed, model)
            scored = sources.scores_from_srs(films, parsed)
            inputs = [args.manifest]
        else:
            # raw scores from the worker's own pipeline; no site threshold (it may be the old one)
            scored = sources.scores_from_model(films, model, cfg.replace(inference={"site_threshold_file": ""}))
            inputs = [args.manifest]
        for line in sources.unassessable_lines(films, scored):
            print(f"cxr-triage commission: {line}", file=sys.stderr)
        site = commission(films, scored, model, args.site, args.target, args.confidence, args.interval,
                          source_files=inputs, also_targets=also, min_set_aside=args.min_set_aside,
                          accept_no_savings=args.accept_no_savings)
    except InsufficientEvidence as exc:
        print(f"cxr-triage commission: {exc}", file=sys.stderr)
        return EXIT_INSUFFICIENT
    except (sources.SourceError, ValueError, FileNotFoundError) as exc:
        print(f"cxr-triage commission: {exc}", file=sys.stderr)
        return 2
    for line in _result_lines(site):  # said before anything is written
        print(line)
    write_site_threshold(site, args.out)
    print(f"wrote {args.out}: serve with `cxr-triage serve --model {model} --site-threshold {args.out}` "
          "(or set [inference] model_path and site_threshold_file)")
    return 0


def _result_lines(site: Any) -> list[str]:
    """What the rule demanded of these films and what the chosen threshold does, for the console."""
    # start-up time, as above: the advice module loads scipy
    from cxr_triage.evaluation.commission_advice import RuleDemands

    at = site.evidence["at_threshold"]
    sp, wl = at["specificity"], at["workload_all"]
    lines = RuleDemands(**site.evidence["rule_demands"]).lines()
    lines += [
        f"site {site.site}: threshold {site.threshold:.6f} for model {site.model_name} {site.model_version} "
        f"(sha256 {site.model_sha256[:16]}...)",
        f"  sensitivity {at['sensitivity']['value']:.4f} ({at['tp']}/{at['tp'] + at['fn']}), lower "
        f"{site.confidence:.0%} bound ({site.ci_method}) {at['sensitivity_lower_bound']:.4f} >= {site.target_sensitivity:g}",
        f"  specificity {sp['value']:.4f} ({at['tn']}/{at['tn'] + at['fp']} normal films set aside, Wilson "
        f"{sp['low']:.4f}-{sp['high']:.4f}); workload saved {wl['value']:.1%} of films ({wl['k']}/{wl['n']})",
    ]
    if not site.evidence["saves_work"]:
        lines.append(f"  WARNING: written because of --accept-no-savings: this threshold sets aside only {at['tn']} "
                     f"of {at['tn'] + at['fp']} normal films, fewer than --min-set-aside asks")
    return lines


def run_reconcile(args: argparse.Namespace, cfg: Any) -> int:
    from cxr_triage.evaluation import drift
    from cxr_triage.evaluation import reconcile as rc
    from cxr_triage.evaluation import reconcile_keys as keys

    if not args.outcomes and not args.feedback:
        print("cxr-triage reconcile: give --outcomes CSV and/or --feedback", file=sys.stderr)
        return 2
    key: str = "study_instance_uid"
    outcomes: dict[str, rc.Outcome] = {}
    if args.outcomes:
        try:
            key, outcomes = rc.read_outcomes(args.outcomes, args.accession_column, args.label_column,
                                              args.abnormal_values, args.normal_values)
        except (ValueError, FileNotFoundError) as exc:
            print(f"cxr-triage reconcile: {exc}", file=sys.stderr)
            return 2
    if args.feedback and (args.srs or key == "sop_instance_uid"):
        print("cxr-triage reconcile: --feedback needs the job store and study-level outcomes", file=sys.stderr)
        return 2
    reports = []
    if args.srs:
        live = rc.live_from_srs(args.srs)
        if key == "accession_number":
            key, outcomes = "study_instance_uid", keys.by_study_uid(outcomes, keys.accessions_from_srs(args.srs))
    else:
        from cxr_triage.dicom_node.store.jobs import JobStore
        from cxr_triage.dicom_node.store.queries import StudyQueries

        path = args.store or resolve_path(cfg, cfg.node.state_dir) / "queue.sqlite3"
        if not Path(path).is_file():
            print(f"cxr-triage reconcile: no job store at {path} (give --store or --srs)", file=sys.stderr)
            return 2
        since = rc.utc_day_bounds(args.since)[0] if args.since else None
        until = rc.utc_day_bounds(args.until)[1] if args.until else None
        store = StudyQueries(JobStore(Path(path)))
        live = rc.live_from_store(store, since, until)
        if key == "accession_number":
            key, outcomes = "study_instance_uid", keys.by_study_uid(outcomes, keys.accessions_from_store(store, since, until))
        if args.feedback:
            given = rc.feedback_from_store(store)
            print(f"radiologist feedback: {len(given)} studies with a read")
            outcomes = {**given, **outcomes}
        try:
            baseline = drift.load_baseline(cfg)
        except Exception as exc:  # noqa: BLE001 - drift is an extra; the reconciliation still stands
            print(f"cxr-triage reconcile: no drift report ({exc})", file=sys.stderr)
            baseline = None
        if baseline:
            rows = drift.film_rows_from_store(store, since, until)
            reports = drift.daily_reports(baseline, rows, drift.DriftBounds.from_config(cfg))
    rec = rc.reconcile(key, outcomes, live)
    for line in rc.summary_lines(rec):
        print(line)
    for r in reports:
        flag = "DRIFT: " + "; ".join(r.reasons) if r.drifted else "ok"
        psi = "n/a" if r.psi is None else f"{r.psi:.3f}"
        print(f"drift {r.period}: {r.n_films} films, PSI {psi}, {flag}")
    if args.discordant:
        rc.write_discordant_manifest(rec.discordant, args.discordant)
        print(f"wrote {len(rec.discordant)} discordant films to {args.discordant}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**rec.to_dict(), "drift": [r.to_dict() for r in reports]}, indent=2))
        print(f"wrote {args.out}")
    return 0
