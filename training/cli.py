"""``cxr-triage manifest | train | export | report``: retrain on a department's own films.

    cxr-triage manifest --dataset folder --root /data/site1 --labels /data/site1/labels.csv --out site1.csv
    cxr-triage train --manifest site1.csv --out runs/site1 --max-minutes 60   # then --resume if stopped
    torchrun --nproc-per-node 2 -m cxr_triage.training.cli train --manifest site1.csv --out runs/ddp
    cxr-triage export --checkpoint runs/site1/model.pt --out site1.onnx --name site1-cxr --version 1.0
    cxr-triage report --model site1.onnx --manifest runs/site1/split.csv --compare bundled.onnx

Every failure is one line on stderr and a non-zero exit (2: bad input; 1: the export check
failed). Heavy imports (torch, MONAI) happen inside the run functions only.
"""


from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from cxr_triage.config import load_config
from cxr_triage.contract.manifest import ManifestError
from cxr_triage.training.cli_args import (
    CONFIG_KEYS,
    DESCRIPTIONS,
    FINETUNE,
    Help,
    export_args,
    manifest_args,
    train_args,
)
from cxr_triage.training.progress import EPOCHS_UNDER_BUDGET, log_to_file
from cxr_triage.training.train_config import TrainConfig, frozen_blocks


def register(subparsers: Any, name: str, help_text: str) -> None:
    """Add the ``name`` command (train, export, manifest or report) to ``subparsers``."""
    p = subparsers.add_parser(name, help=help_text, description=DESCRIPTIONS.get(name, help_text),
                              formatter_class=Help)
    if name == "train":
        train_args(p)
        p.set_defaults(func=run_train)
    elif name == "export":
        export_args(p)
        p.set_defaults(func=run_export)
    elif name == "manifest":
        manifest_args(p)
        p.set_defaults(func=run_manifest)
    elif name == "report":
        # report imports ONNX Runtime and SciPy: only when the report command is asked for
        from cxr_triage.training.report import add_arguments, run

        add_arguments(p)
        p.set_defaults(func=run)
    else:  # pragma: no cover
        raise ValueError(name)


def config_from_args(args: argparse.Namespace, cfg: Any = None):
    """TrainConfig from the options; unset [training]-backed ones from ``cfg`` (the loaded config)."""
    section: dict[str, Any] = {}
    if cfg is not None:
        section = cfg.training.as_dict()
    fields = TrainConfig.__dataclass_fields__
    values = {k: getattr(args, k) for k in fields if hasattr(args, k)}
    d = TrainConfig(manifest="", out="")
    for key, value in FINETUNE.items():  # a fine-tune's defaults, where the user gave none
        if values.get(key) is None and (args.init_from or key not in CONFIG_KEYS):
            values[key] = value if args.init_from else getattr(d, key)
    for key in CONFIG_KEYS:
        if values.get(key) is None:
            values[key] = section.get(key, getattr(d, key))
    if values.get("freeze_blocks") is None:  # the same stages of each EfficientNet-Lite
        values["freeze_blocks"] = frozen_blocks(str(values["architecture"]))
    values["manifest"] = args.manifest or ""
    if args.max_minutes and args.epochs is None:  # the budget the user gave rules, not a default count
        values["epochs"] = EPOCHS_UNDER_BUDGET
    values["pretrained"] = not args.no_pretrained
    values["progress"] = not args.no_progress
    values["test_report"] = (not args.no_test_report) and bool(section.get("test_report", True))
    return TrainConfig(**values)


def run_train(args: argparse.Namespace, cfg: Any = None) -> int:
    # train imports SciPy, scikit-learn and MONAI's data pipeline: only when a run starts
    from cxr_triage.training.train import train

    if not args.manifest and not args.resume:
        print("cxr-triage train: give --manifest (or --resume a run folder)", file=sys.stderr)
        return 2
    if cfg is None:
        cfg = load_config(None)
    if not args.log_json:
        log_to_file(Path(args.out) / "train_log.jsonl", cfg.logging.level)
    try:
        summary = train(config_from_args(args, cfg), resume=args.resume)
    except (ManifestError, ValueError, FileNotFoundError) as exc:
        print(f"cxr-triage train: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cxr-triage train: interrupted; continue with --resume --out {args.out}, or export "
              f"{Path(args.out) / 'best.pt'}", file=sys.stderr)
        return 130
    if summary:
        keys = ("epochs_run", "best_epoch", "best_val_auroc", "temperature", "thresholds", "minutes", "stopped_by",
                "test_report", *(["init_comparison"] if "init_comparison" in summary else []))
        print(json.dumps({k: summary.get(k) for k in keys}, indent=2, default=float))
    return 0


def run_export(args: argparse.Namespace, cfg: Any = None) -> int:
    # export and checkpoints import ONNX Runtime and SciPy: only when an export runs
    from cxr_triage.training.checkpoints import calibrate_checkpoint, run_split_csv
    from cxr_triage.training.export import ExportCheckError, export_checkpoint

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        print(f"cxr-triage export: checkpoint not found: {checkpoint}", file=sys.stderr)
        return 2
    run_split = not args.films and not args.check_manifest
    if run_split and args.data_root is not None:
        # a run's split.csv names its films relative to the run folder, not to a data folder
        print(f"cxr-triage export: --data-root {args.data_root} ignored: it goes with --check-manifest; the run's "
              "split.csv is read with its own film paths", file=sys.stderr)
        args.data_root = None
    try:
        ck = calibrate_checkpoint(checkpoint)
        manifest = args.check_manifest
        if run_split:
            manifest = run_split_csv(ck, checkpoint)
            args.data_root = ck.get("films_root") or ck.get("config", {}).get("data_root") or None
        name = args.name or default_model_name(ck, checkpoint)
        report = export_checkpoint(checkpoint, args.out, films=[Path(f) for f in args.films],
                                   data_root=args.data_root, check_manifest=manifest,
                                   tolerance=args.tolerance, name=name, version=args.version, ck=ck,
                                   max_bytes=int(args.max_mib * 2**20))
    except ExportCheckError as exc:
        print(f"cxr-triage export: check failed, nothing written: {exc}", file=sys.stderr)
        return 1
    except (ManifestError, ValueError, FileNotFoundError, KeyError) as exc:
        print(f"cxr-triage export: {exc}", file=sys.stderr)
        return 2
    if not args.name:
        print(f"cxr-triage export: model named {name!r} (choose with --name, --version)", file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0


def default_model_name(ck: dict[str, Any], checkpoint: Path) -> str:
    """``cxr-triage-<architecture>-<run folder>``: a retrained model never carries the bundled name."""
    arch = str(ck.get("architecture", "model")).replace("_", "-")
    run = "".join(c if c.isalnum() or c in "-._" else "-" for c in checkpoint.resolve().parent.name) or "run"
    return f"cxr-triage-{arch}-{run}"


def run_manifest(args: argparse.Namespace, cfg: Any = None) -> int:
    """``cxr-triage manifest`` (:func:`cxr_triage.training.manifest_cmd.run_manifest`)."""
    # manifest_cmd imports scikit-learn (the split): only when the manifest command runs
    from cxr_triage.training.manifest_cmd import run_manifest as run

    return run(args, cfg)


def main(argv: list[str] | None = None) -> int:
    """Entry for ``python -m cxr_triage.training.cli`` (e.g. under torchrun)."""
    parser = argparse.ArgumentParser(prog="cxr_triage.training.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "export", "manifest", "report"):
        register(sub, name, name)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    return int(args.func(args, load_config(None)) or 0)


if __name__ == "__main__":
    sys.exit(main())
