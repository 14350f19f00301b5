"""`make train`: reproduce the shipped model from ../shared/data on a 2-core CPU (< 60 min).

Steps: manifest of the shared films with the committed patient-level split
(``model/default_split.csv``; made afresh with seed 0 when absent) -> train the default recipe
-> calibrate on validation -> export + ORT check -> test-split report.

The recipe (and why), recorded in the model card:
- NIH films only for training and validation selection (nih-cxr14 + nih-extra). The 224 px
  RSNA normals are kept in the split and reported on, but not trained on by default: a model
  that learns their resizing pipeline calls NIH normals abnormal (shared/data README).
- Patients under 16 excluded (intended use 16+; the worker's gate refuses them).
- EfficientNet-Lite0, ImageNet weights, stem + first 6 blocks frozen, 224 px, class-balanced
  loss, early stopping on NIH validation AUROC.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_triage.paths import repo_root

if TYPE_CHECKING:
    from cxr_triage.training.train import TrainConfig

NIH_SOURCES = ["nih-cxr14", "nih-extra"]
DEFAULT_SPLIT = repo_root() / "model" / "default_split.csv"


def default_recipe(manifest: Path, data: Path, out: Path, **overrides: Any) -> TrainConfig:
    from cxr_triage.training.train import TrainConfig

    cfg = TrainConfig(
        manifest=str(manifest), out=str(out), data_root=str(data), architecture="effnet_lite0",
        freeze_blocks=6, epochs=14, batch_size=32, lr=1e-3, patience=4, seed=0,
        train_sources=list(NIH_SOURCES), select_sources=list(NIH_SOURCES),
        test_report=False,  # the report below scores the exported ONNX file itself
    )
    return dataclasses.replace(cfg, **overrides)


def build_split(data: Path, path: Path, seed: int = 0) -> Path:
    """The shared films as a manifest with a patient-level split (children excluded)."""
    from cxr_triage.training.adapters import shared_data
    from cxr_triage.training.manifest import write_manifest
    from cxr_triage.training.split import assign_splits

    return write_manifest(assign_splits(shared_data(data), 0.2, 0.2, seed), path)


def write_rsna_subsample(split: Path, out: Path, n: int, seed: int = 0) -> Path:
    """The split without all but ``n`` (seeded) of the training-split RSNA normals."""
    import numpy as np

    from cxr_triage.training.manifest import read_manifest, write_manifest

    rows = read_manifest(split)
    pool = [i for i, e in enumerate(rows) if e.source == "rsna-normals" and e.split == "train"]
    keep = set(np.random.default_rng(seed).choice(pool, size=min(n, len(pool)), replace=False).tolist())
    return write_manifest([e for i, e in enumerate(rows) if i not in pool or i in keep], out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default="runs/default")
    ap.add_argument("--split", default=str(DEFAULT_SPLIT), help="split CSV (made when missing)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--architecture", default="effnet_lite0")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a busy machine)")
    ap.add_argument("--rsna-train-normals", type=int, default=0,
                    help="also train on this many RSNA normals of the training split (seeded sample)")
    ap.add_argument("--harmonise-size", type=int, default=224, help="PreprocessSpec.harmonise_size")
    ap.add_argument("--balance", default="label", choices=["label", "source_label"])
    ap.add_argument("--select-metric", default="auroc", choices=["auroc", "source_mean_auroc"])
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--no-export", action="store_true")
    args = ap.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    data, out = Path(args.data).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = Path(args.split)
    if not split.exists():
        build_split(data, split)
    manifest = out / "manifest.csv"
    if not manifest.exists():
        if args.rsna_train_normals:
            write_rsna_subsample(split, manifest, args.rsna_train_normals)
        else:
            shutil.copyfile(split, manifest)
    overrides = {"architecture": args.architecture, "threads": args.threads, "balance": args.balance,
                 "select_metric": args.select_metric, "harmonise_size": args.harmonise_size}
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.rsna_train_normals:
        overrides["train_sources"] = [*NIH_SOURCES, "rsna-normals"]
    if args.architecture != "effnet_lite0":
        overrides["freeze_blocks"] = 0
    cfg = default_recipe(manifest, data, out, **overrides)

    from cxr_triage.training.train import train

    summary = train(cfg, resume=args.resume)
    print(json.dumps({k: summary[k] for k in ("best_epoch", "best_val_auroc", "temperature", "thresholds", "minutes")}, indent=2))
    if args.no_export:
        return 0
    from cxr_triage.training.export import export_checkpoint
    from cxr_triage.training.report import test_report

    onnx_path = out / "cxr_triage_effnet_lite0.onnx"
    export_checkpoint(out / "model.pt", onnx_path, data_root=data, check_manifest=manifest)
    report = test_report(onnx_path, manifest, data, out / "test_report.json", headline_sources=NIH_SOURCES)
    print(json.dumps(report["headline"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
