"""Seed ensembles: several finished runs of one recipe shipped as one model file."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from cxr_triage.training.checkpoints import batch_logits
from cxr_triage.training.dataset import load_inputs
from cxr_triage.training.heatmap import heatmap_validation
from cxr_triage.training.manifest import read_manifest, write_manifest
from cxr_triage.training.progress import say
from cxr_triage.training.targets import TASKS
from cxr_triage.training.train_config import TrainConfig
from cxr_triage.training.val_calibration import calibration


def ensemble_runs(runs: list[Path], out: Path) -> dict[str, Any]:
    """Several finished runs of one recipe (different seeds, the same split) -> one
    ``<out>/model.pt`` whose network is their :class:`~cxr_triage.training.network.EnsembleNet`
    (mean logits): calibrated, given operating points (and the heatmap check) on the runs'
    validation split like a single run; ``export`` reads it unchanged. Returns its validation
    metrics. Raises ValueError when the runs differ in input size, outputs or split."""
    import os

    import torch  # torch only once training runs

    # network imports torch at module level: only once an ensemble is made
    from cxr_triage.training.network import EnsembleNet, network_from_checkpoint

    cks = [torch.load(Path(r) / "model.pt", map_location="cpu", weights_only=False) for r in runs]
    first = cks[0]
    for r, ck in zip(runs[1:], cks[1:]):
        if (ck["image_size"], ck.get("n_outputs", 1), ck["preprocessing"]) != \
                (first["image_size"], first.get("n_outputs", 1), first["preprocessing"]):
            raise ValueError(f"{r}: input size, outputs or preprocessing differ from {runs[0]}")
        if (Path(r) / "split.csv").read_bytes() != (Path(runs[0]) / "split.csv").read_bytes():
            raise ValueError(f"{r}: another split than {runs[0]}: an ensemble is calibrated on one validation split")
    out.mkdir(parents=True, exist_ok=True)
    # the first run's split, its paths made relative to ``out`` (as a run folder's split.csv is)
    first_dir, base = Path(runs[0]).resolve(), out.resolve()
    rows = read_manifest(first_dir / "split.csv")
    for e in rows:
        e.file = os.path.relpath((first_dir / e.file).resolve(), base)
        if e.extra.get("twin"):
            e.extra["twin"] = os.path.relpath((first_dir / e.extra["twin"]).resolve(), base)
    write_manifest(rows, out / "split.csv")
    cfg = TrainConfig(**{k: v for k, v in first["config"].items() if k in TrainConfig.__dataclass_fields__})
    cfg.out = str(out)
    net = EnsembleNet([network_from_checkpoint(ck) for ck in cks]).eval()
    root = Path(first.get("films_root") or cfg.data_root)
    entries = read_manifest(out / "split.csv")
    entries_root = out
    val_e = [e for e in entries if e.split == "val" and (not cfg.train_sources or e.source in cfg.train_sources)]
    sel = np.array([not cfg.select_sources or e.source in cfg.select_sources for e in val_e])
    x = load_inputs(val_e, entries_root, cfg.spec(), Path(runs[0]) / "cache", progress=False)
    logits = batch_logits(net, x).astype(np.float64)
    cal = calibration(cfg, val_e, logits, sel, 0)
    if cfg.boxes_csv:
        cal["heatmap"] = heatmap_validation(cfg, entries, entries_root, net, cal, "cpu")
        cal["validation_metrics"]["heatmap"] = {k: v for k, v in cal["heatmap"].items() if k != "mask"}
    n_out = int(first.get("n_outputs", 1))
    model_file = {
        "architecture": "ensemble", "image_size": first["image_size"], "n_outputs": n_out,
        "tasks": list(TASKS[:n_out]), "preprocessing": first["preprocessing"], **cal,
        "members": [{"architecture": ck["architecture"], "image_size": ck["image_size"],
                     "n_outputs": ck.get("n_outputs", 1), "model": ck["model"],
                     "config_seed": ck.get("config", {}).get("seed")} for ck in cks],
        "training_manifest_sha256": first.get("training_manifest_sha256", ""),
        "config": {**asdict(cfg), "ensemble_of": [str(r) for r in runs]},
        "split_csv": str((out / "split.csv").resolve()), "films_root": str(root.resolve()),
    }
    torch.save(model_file, out / "model.pt")
    members = ", ".join(f"{ck.get('validation_metrics', {}).get('auroc', float('nan')):.4f}" for ck in cks)
    say(f"ensemble of {len(cks)} runs: validation AUROC {cal['validation_metrics']['auroc']:.4f} "
         f"(members: {members})")
    return dict(cal["validation_metrics"])
