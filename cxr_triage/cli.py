"""The single ``cxr-triage`` command; each stage registers its own subcommands.

Subcommand modules are imported lazily and must not import torch/MONAI at module level,
so ``cxr-triage --help`` and the worker's commands stay light.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module with ``register(subparsers)``, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("cxr_triage.dicom_node.service.cli", "run the DICOM node (receive, triage, return results)"),
    "status": ("cxr_triage.dicom_node.service.cli", "show queue counts, oldest pending item, delivery failures"),
    "predict": ("cxr_triage.inference.cli", "triage DICOM/PNG files or folders and print results"),
    "train": ("cxr_triage.training.cli", "train a classifier from a manifest CSV"),
    "export": ("cxr_triage.training.cli", "export a checkpoint to ONNX with metadata, checked"),
    "manifest": ("cxr_triage.training.cli", "build a manifest CSV from a folder + labels CSV, DICOM or a public layout"),
    "report": ("cxr_triage.training.cli", "test report of a model per source and view, optionally compared with another"),
    "evaluate": ("cxr_triage.evaluation.cli", "measure sensitivity, specificity, workload saved"),
    "commission": ("cxr_triage.evaluation.commission_cli", "choose a site operating point bound to a model"),
    "reconcile": ("cxr_triage.evaluation.commission_cli", "compare live results with radiologist outcomes"),
    "wrap": ("cxr_triage.dicom_node.tools.wrap", "wrap PNG/JPEG films into CR/DX/SC DICOM files"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage",
        description="AI chest X-ray triage: likely normal / suspicious / not assessable.",
    )
    parser.add_argument("--config", help="TOML configuration file (default: $CXR_TRIAGE_CONFIG or embedded defaults)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = sys.argv[1:2] if len(sys.argv) > 1 else []
    for name, (module, help_text) in SUBCOMMANDS.items():
        # Only import the module whose command runs; others get a placeholder for --help.
        if name in wanted or any(a == name for a in sys.argv[1:]):
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as exc:
                raise SystemExit(f"cxr-triage {name}: missing dependency {exc.name!r} ({exc})") from exc
            mod.register(sub, name, help_text)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser = build_parser()
    args = parser.parse_args()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from cxr_triage.config import ConfigError, load_config
    from cxr_triage.logs import setup_logging

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"cxr-triage: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.logging.level, cfg.logging.format)
    return int(args.func(args, cfg) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
