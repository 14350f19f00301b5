"""``cxr-triage manifest``: import a dataset folder (or join manifests) into a manifest CSV.

Whatever an import leaves out is printed (stderr) and counted in the JSON summary (stdout);
exit 2 on bad input, 3 with ``--strict`` when anything was left out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from cxr_triage.contract.manifest import ManifestError
from cxr_triage.training.adapters import ADAPTERS, Columns, DatasetError, ImportProblems, drop_missing
from cxr_triage.training.adapters.site import LABEL_HINT
from cxr_triage.training.manifest import read_manifest, write_manifest
from cxr_triage.training.split import assign_splits, summarise


def _adapter_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    cols = Columns(file=args.file_column, label=args.label_column, patient_id=args.patient_column,
                   view=args.view_column, age=args.age_column, sex=args.sex_column, source=args.source_column,
                   findings=args.findings_column)
    common = {"labels": Path(args.labels) if args.labels else None, "columns": cols, "source": args.source,
              "abnormal_values": args.abnormal_values, "normal_values": args.normal_values, "min_age": args.min_age}
    if args.dataset == "folder":
        return common
    if args.dataset == "dicom":
        return {**common, "key": args.key, "key_column": args.key_column}
    if args.dataset == "shared":
        return {"min_age": args.min_age}
    return {}


def _unreadable_labels(problems: ImportProblems) -> bool:
    """Whether rows were left out for a label no spelling reads (then the LABEL_HINT is printed)."""
    return any("unreadable label" in kind for kind in problems.counts)


def run_manifest(args: argparse.Namespace, cfg: Any = None) -> int:
    if args.combine:
        return _combine(args.combine, Path(args.out))
    if not args.dataset or not args.root:
        print("cxr-triage manifest: give --dataset and --root (or --combine MANIFEST ...)", file=sys.stderr)
        return 2
    root = Path(args.root)
    if not root.is_dir():
        print(f"cxr-triage manifest: no such folder: {root}", file=sys.stderr)
        return 2
    problems = ImportProblems()
    try:
        kwargs = _adapter_kwargs(args)
        if args.dataset in ("folder", "dicom", "shared"):
            kwargs["problems"] = problems
        entries = ADAPTERS[args.dataset](root, **kwargs)
        if args.dataset not in ("folder", "dicom"):
            entries = drop_missing(entries, root, problems)
        if not entries:
            raise DatasetError(f"{root}: no films found for --dataset {args.dataset}"
                               + (f" ({'; '.join(problems.lines())})" if problems else ""))
        if args.split:
            assign_splits(entries, args.val_fraction, args.test_fraction, seed=args.seed)
    except (DatasetError, ManifestError, ValueError, OSError, KeyError) as exc:
        what = f"missing column {exc}" if isinstance(exc, KeyError) else str(exc)
        print(f"cxr-triage manifest: {what}" + (f"; hint: {LABEL_HINT}" if _unreadable_labels(problems) else ""),
              file=sys.stderr)
        return 2
    out = Path(args.out)
    base = out.resolve().parent
    for e in entries:
        for key in ("file", "twin"):  # ``twin``: the same film through another pipeline, a path like ``file``
            value = e.file if key == "file" else e.extra.get("twin", "")
            if not value:
                continue
            p = Path(value)
            full = p if p.is_absolute() else (root / p).resolve()
            new = str(full) if args.paths == "absolute" else os.path.relpath(full, base) if args.paths == "manifest" \
                else value
            if key == "file":
                e.file = new
            else:
                e.extra["twin"] = new
    write_manifest(entries, out)
    for line in problems.lines():
        print(f"cxr-triage manifest: left out {line}", file=sys.stderr)
    if _unreadable_labels(problems):
        print(f"cxr-triage manifest: hint: {LABEL_HINT}", file=sys.stderr)
    by_source: dict[str, dict[str, int]] = {}
    for e in entries:
        row = by_source.setdefault(e.source or "-", {"films": 0, "normal": 0, "abnormal": 0})
        row["films"] += 1
        row["abnormal" if e.label else "normal"] += 1
    print(json.dumps({"manifest": str(out), "films": len(entries), "by_source": by_source,
                      "by_split": {k or "unsplit (train makes the split)": v for k, v in summarise(entries).items()},
                      "left_out": problems.to_dict(),
                      "paths_relative_to": {"manifest": str(base), "root": str(root.resolve()),
                                            "absolute": "/"}[args.paths]}, indent=2))
    return 3 if args.strict and problems else 0


def _combine(manifests: list[str], out: Path) -> int:
    """``manifest --combine``: the rows of several manifests in one, every column kept, paths
    (``file``, ``twin``) rewritten relative to ``out``'s folder. Exit 2 naming a bad manifest."""
    base = out.resolve().parent
    entries = []
    for m in manifests:
        path = Path(m)
        try:
            rows = read_manifest(path)
        except (ManifestError, OSError) as exc:
            print(f"cxr-triage manifest: {exc}", file=sys.stderr)
            return 2
        folder = path.resolve().parent
        for e in rows:
            e.file = os.path.relpath((folder / e.file).resolve(), base)
            if e.extra.get("twin"):
                e.extra["twin"] = os.path.relpath((folder / e.extra["twin"]).resolve(), base)
        entries += rows
    write_manifest(entries, out)
    print(json.dumps({"manifest": str(out), "films": len(entries), "from": manifests}, indent=2))
    return 0
