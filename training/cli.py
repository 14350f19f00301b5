"""``cxr-triage train | export | manifest``: retrain on a department's own films.

    cxr-triage manifest --dataset nih --root /data/ChestX-ray14 --out nih.csv
    cxr-triage train --manifest nih.csv --out runs/site1            # then --resume if stopped
    torchrun --nproc-per-node 2 -m cxr_triage.training.cli train --manifest nih.csv --out runs/ddp
    cxr-triage export --checkpoint runs/site1/model.pt --out site1.onnx

Heavy imports (torch, MONAI) happen inside the run functions only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any, name: str, help_text: str) -> None:
    p = subparsers.add_parser(name, help=help_text, description=help_text)
    if name == "train":
        _train_args(p)
        p.set_defaults(func=run_train)
    elif name == "export":
        p.add_argument("--checkpoint", required=True, help="model.pt written by `cxr-triage train`")
        p.add_argument("--out", required=True, help="ONNX file to write")
        p.add_argument("--check-manifest", help="manifest whose validation films check the export "
                       "(default: the split.csv beside the checkpoint)")
        p.add_argument("--data-root", help="films' root for the check manifest")
        p.add_argument("--films", nargs="*", default=[], help="real films to check on instead")
        p.add_argument("--tolerance", type=float, default=1e-4)
        p.add_argument("--name")
        p.add_argument("--version")
        p.set_defaults(func=run_export)
    elif name == "manifest":
        from cxr_triage.training.adapters import ADAPTERS

        p.add_argument("--dataset", required=True, choices=sorted(ADAPTERS))
        p.add_argument("--root", required=True, help="the dataset's folder, in its standard layout")
        p.add_argument("--out", required=True, help="manifest CSV to write (files relative to --root)")
        p.add_argument("--split", action="store_true", help="also assign a patient-level split")
        p.add_argument("--seed", type=int, default=0)
        p.set_defaults(func=run_manifest)
    else:  # pragma: no cover
        raise ValueError(name)


def _train_args(p: argparse.ArgumentParser) -> None:
    from cxr_triage.training.train import TrainConfig

    d = TrainConfig(manifest="", out="")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data-root", default="", help="films' root (default: the manifest's folder)")
    p.add_argument("--architecture", default=d.architecture, choices=["effnet_lite0", "densenet121", "tiny"])
    p.add_argument("--no-pretrained", action="store_true")
    for key in ("freeze_blocks", "trunk_views", "image_size", "harmonise_size", "epochs", "batch_size", "patience",
                "seed", "threads", "max_steps_per_epoch"):
        p.add_argument("--" + key.replace("_", "-"), type=int, default=getattr(d, key))
    for key in ("lr", "weight_decay", "focal_gamma", "augment", "val_fraction", "test_fraction"):
        p.add_argument("--" + key.replace("_", "-"), type=float, default=getattr(d, key))
    p.add_argument("--train-sources", nargs="*", default=[], help="train/validate on these sources only")
    p.add_argument("--select-sources", nargs="*", default=[], help="val sources for AUROC and calibration")
    p.add_argument("--balance", default=d.balance, choices=["label", "source_label"])
    p.add_argument("--select-metric", default=d.select_metric, choices=["auroc", "source_mean_auroc"])
    p.add_argument("--cache-dir", default="")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace):
    from cxr_triage.training.train import TrainConfig

    fields = TrainConfig.__dataclass_fields__
    values = {k: getattr(args, k) for k in fields if hasattr(args, k)}
    values["pretrained"] = not args.no_pretrained
    values["progress"] = not args.no_progress
    return TrainConfig(**values)


def run_train(args: argparse.Namespace, cfg: Any = None) -> int:
    from cxr_triage.training.train import train

    summary = train(config_from_args(args), resume=args.resume)
    if summary:
        keys = ("epochs_run", "best_epoch", "best_val_auroc", "temperature", "thresholds", "minutes")
        print(json.dumps({k: summary[k] for k in keys}, indent=2, default=float))
    return 0


def run_export(args: argparse.Namespace, cfg: Any = None) -> int:
    from cxr_triage.training.export import ExportCheckError, export_checkpoint

    manifest = args.check_manifest
    if not args.films and not manifest:
        manifest = Path(args.checkpoint).parent / "split.csv"
        if args.data_root is None:
            import torch

            ck = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
            args.data_root = ck.get("films_root") or ck["config"]["data_root"] or None
    try:
        report = export_checkpoint(args.checkpoint, args.out, films=[Path(f) for f in args.films],
                                   data_root=args.data_root, check_manifest=manifest,
                                   tolerance=args.tolerance, name=args.name, version=args.version)
    except ExportCheckError as exc:
        print(f"cxr-triage export: check failed, nothing written: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


def run_manifest(args: argparse.Namespace, cfg: Any = None) -> int:
    from cxr_triage.training.adapters import ADAPTERS
    from cxr_triage.training.manifest import write_manifest
    from cxr_triage.training.split import assign_splits, summarise

    entries = ADAPTERS[args.dataset](Path(args.root))
    if args.split:
        assign_splits(entries, seed=args.seed)
    write_manifest(entries, args.out)
    print(json.dumps({"films": len(entries), "by_split": summarise(entries)}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry for ``python -m cxr_triage.training.cli`` (e.g. under torchrun)."""
    parser = argparse.ArgumentParser(prog="cxr_triage.training.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "export", "manifest"):
        register(sub, name, name)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO)
    return int(args.func(args, None) or 0)


if __name__ == "__main__":
    sys.exit(main())
