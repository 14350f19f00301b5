"""``cxr-triage predict PATH...``: triage files or folders and print one result per film.

``--json`` prints one JSON object per line (machine-readable, stable keys from
``FilmResult.to_dict``, the nodule/mass score, threshold and flag included); without it, a
table for people, with a nodule/mass column when the model has that output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cxr_triage.config import Config


def register(subparsers: Any, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description="Triage chest films (DICOM CR/DX/SC, PNG, JPEG; files or folders searched "
        "recursively) with the configured ONNX model and print likely normal / suspicious / "
        "not assessable (with the reason) for each film. The last lines name the model (name and "
        "version, as the SR records them), its operating point and threshold, and what the "
        "nodule/mass output means; with --json each line also carries model_name and model_version.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="DICOM/PNG/JPEG files or folders")
    p.add_argument("--json", action="store_true", help="one JSON object per film (JSON lines)")
    p.add_argument("--model", help="ONNX model file (default: [inference] model_path, else bundled)")
    p.add_argument("--operating-point", dest="operating_point",
                   help="a threshold name stored in the model, e.g. sens_0.98 (default: config)")
    p.add_argument("--threshold", type=float,
                   help="explicit probability threshold (overrides --operating-point)")
    p.add_argument("--nodule-operating-point", dest="nodule_operating_point",
                   help="a nodule/mass threshold name stored in the model, e.g. sens_0.9 "
                   "(default: config, else the model's; models with a nodule/mass output only)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: config)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    # start-up time: `cxr-triage predict --help` and bad arguments load no ONNX Runtime or
    # pydicom (the command line imports this module to register `predict`)
    from cxr_triage.inference.pipeline import Triager
    from cxr_triage.inference.scorer import ModelError
    from cxr_triage.inference.site_threshold import SiteThresholdError

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"cxr-triage predict: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        triager = Triager(cfg, model_path=args.model, operating_point=args.operating_point,
                          threshold=args.threshold, threads=args.threads,
                          nodule_operating_point=args.nodule_operating_point)
    except (ModelError, SiteThresholdError, ValueError) as exc:
        print(f"cxr-triage predict: {exc}", file=sys.stderr)
        return 2
    results = triager.triage_paths(args.paths)
    if not results:
        print("cxr-triage predict: no DICOM, PNG or JPEG files found", file=sys.stderr)
        return 1
    if args.json:
        for r in results:
            print(json.dumps(r.to_dict(), sort_keys=True))
    else:
        print(format_table(results, triager))
    return 0


def format_table(results: list[Any], triager: Any) -> str:
    """Fixed-width table: file, decision, score vs threshold, the nodule/mass flag and score
    (models with that output only; the score alone from a model that gives no flag), reason;
    then the operating points, the nodule/mass one in words (why no flag, where none)."""
    nodule = getattr(triager, "nodule_threshold", None) is not None
    rows = [("FILE", "DECISION", "SCORE") + (("NODULE/MASS",) if nodule else ()) + ("REASON",)]
    for r in results:
        score = f"{r.score:.3f}" if r.score is not None else "-"
        reason = f"{r.reason.value}: {r.reason_detail}" if r.reason else ""
        flag = (nodule_cell(r),) if nodule else ()
        rows.append((Path(r.source).name or r.source, r.decision.value, score) + flag + (reason,))
    n = len(rows[0]) - 1
    widths = [max(len(row[i]) for row in rows) for i in range(n)]
    lines = ["  ".join(row[i].ljust(widths[i]) for i in range(n)) + "  " + row[n] for row in rows]
    meta = triager.meta
    lines.append(
        f"\nmodel {meta.name} {meta.version}; operating point {triager.operating_point} "
        f"(suspicious when score >= {triager.threshold:.4f})"
    )
    point = getattr(triager, "nodule_point", None)
    if point is not None:
        lines.append(f"nodule/mass {point.statement()}; an added finding, it does not change the decision")
    elif nodule:
        lines.append(
            f"nodule/mass flag: operating point {triager.nodule_operating_point} (flagged when "
            f"nodule/mass score >= {triager.nodule_threshold:.4f}); an added finding, it does not "
            "change the decision"
        )
    return "\n".join(line.rstrip() for line in lines)


def nodule_cell(r: Any) -> str:
    """The NODULE/MASS cell of a film: "FLAGGED 0.712" / "no 0.041", "0.082 (no flag)" from a
    model that gives the score without a flag, "-" when the film was not scored."""
    if r.nodule_score is None:
        return "-"
    if r.nodule_flag is None:
        return f"{r.nodule_score:.3f} (no flag)"
    return f"{'FLAGGED' if r.nodule_flag else 'no'} {r.nodule_score:.3f}"
