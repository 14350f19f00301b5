"""The run folder's checkpoints: ``last.pt`` (resume), ``best.pt`` (best selection metric),
``model.pt`` (best weights + calibration: what ``export`` reads).

Every checkpoint carries its config, so any of them exports: ``best.pt``/``last.pt`` of a
stopped run are calibrated on the validation split at export (:func:`calibrate_checkpoint`).
Weights are saved as plain ``state_dict`` of the network (the averaged weights when the run
keeps an average; ``last.pt`` also holds the trained ones under ``trained``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import numpy as np

from cxr_triage.contract.files import file_sha256
from cxr_triage.training.dataset import load_inputs
from cxr_triage.training.manifest import read_manifest
from cxr_triage.training.progress import say
from cxr_triage.training.targets import TASKS, n_outputs
from cxr_triage.training.train_config import TrainConfig, resumed_config
from cxr_triage.training.train_data import TrainData, check_films, selected, trained_split
from cxr_triage.training.train_model import Model
from cxr_triage.training.val_calibration import calibration

log = logging.getLogger(__name__)


def load_resume(cfg: TrainConfig, resume: bool) -> tuple[TrainConfig, dict[str, Any] | None]:
    """(the run's config, ``<out>/last.pt`` or None): with ``resume`` and a ``last.pt``, the
    saved recipe with this command's run-control settings (:func:`resumed_config`; what it
    ignores is printed). Raises ValueError when no manifest is known."""
    import torch  # torch only once training runs

    last = Path(cfg.out) / "last.pt"
    resume_ck: dict[str, Any] | None = None
    if resume and last.exists():
        resume_ck = torch.load(last, map_location="cpu", weights_only=False)
        if "config" in resume_ck:
            cfg, ignored = resumed_config(resume_ck["config"], cfg)
            for line in ignored:
                say(f"resume: ignored {line}")
            saved_out = str(resume_ck["config"].get("out") or "")
            if saved_out and Path(saved_out) != Path(cfg.out):
                say(f"resume: the run continues in {cfg.out!r} (it was saved as {saved_out!r}; the stored out "
                    "path is updated)")
    elif resume:
        say(f"resume: no {last} yet, starting a new run")
    if not cfg.manifest:
        raise ValueError("no manifest: give --manifest (or --resume a run folder that has last.pt)")
    return cfg, resume_ck


def checkpoint_info(cfg: TrainConfig, data: TrainData) -> dict[str, Any]:
    """What every checkpoint carries besides weights: config, architecture, input size,
    outputs, preprocessing, the split file and the films' root."""
    return {"config": asdict(cfg), "architecture": cfg.architecture, "image_size": cfg.image_size,
            "n_outputs": data.n_out,
            "preprocessing": cfg.spec().to_dict(), "split_csv": str(data.split_csv.resolve()),
            "films_root": str(data.root.resolve())}


def save_epoch(out: Path, model: Model, state: dict[str, Any], select: float, improved: bool,
               info: dict[str, Any]) -> None:
    """After an epoch: ``best.pt`` when it ``improved``, and always ``last.pt`` (weights,
    optimiser, schedule, state; the trained weights too when an average is kept)."""
    import torch  # torch only once training runs

    epoch = state["epoch"]
    if improved:
        torch.save({"model": model.eval_net.state_dict(), "epoch": epoch, "val_auroc": select, **info},
                   out / "best.pt")
    torch.save({"model": model.eval_net.state_dict(), "optimizer": model.opt.state_dict(),
                "scheduler": model.sched.state_dict(), "state": state, "epoch": epoch, **info,
                **({"trained": model.net.state_dict()} if model.ema is not None else {})}, out / "last.pt")


def ensure_best(out: Path, model: Model, state: dict[str, Any], info: dict[str, Any]) -> None:
    """``best.pt`` from the last weights when no epoch improved on -1 (validation AUROC undefined)."""
    import torch  # torch only once training runs

    if not (out / "best.pt").exists():
        torch.save({"model": model.eval_net.state_dict(), "epoch": state["epoch"], "val_auroc": float("nan"),
                    **info}, out / "best.pt")


def model_file_dict(cfg: TrainConfig, net: Any, cal: dict[str, Any], split_csv: Path, root: Path) -> dict[str, Any]:
    """The ``model.pt`` dict: architecture, CPU weights, outputs and tasks, preprocessing, the
    calibration ``cal`` (:func:`~cxr_triage.training.val_calibration.calibration`), the training
    manifest's SHA-256, the config, the split file and the films' root."""
    return {
        "architecture": cfg.architecture, "image_size": cfg.image_size,
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},  # loadable without a GPU
        "n_outputs": n_outputs(cfg.multitask), "tasks": list(TASKS[:n_outputs(cfg.multitask)]),
        "preprocessing": cfg.spec().to_dict(), **cal,
        "training_manifest_sha256": file_sha256(cfg.manifest) if Path(cfg.manifest).is_file() else "",
        "config": asdict(cfg), "split_csv": str(split_csv), "films_root": str(root.resolve()),
        **ensemble_layout(cfg, net),
    }


def ensemble_layout(cfg: TrainConfig, net: Any) -> dict[str, Any]:
    """A fine-tuned ensemble's ``model.pt`` keys (``cfg.members`` > 1): ``architecture``
    "ensemble" and one {architecture, image_size, n_outputs, model} dict per member, as
    :func:`cxr_triage.training.network.network_from_checkpoint` reads them; {} otherwise."""
    if cfg.members <= 1:
        return {}
    return {"architecture": "ensemble",
            "members": [{"architecture": cfg.architecture, "image_size": cfg.image_size, "n_outputs": m.n_outputs,
                         "model": {k: v.detach().cpu() for k, v in m.state_dict().items()}} for m in net.nets]}


def batch_logits(net: Any, x: np.ndarray, device: Any = "cpu") -> np.ndarray:
    """(N, K) float32 logits of ``net`` (eval mode, no grad) on inputs (N, 1, S, S), 64 at a time."""
    import torch  # torch only once training runs

    net.eval()
    with torch.no_grad():
        return np.concatenate([net(torch.from_numpy(np.asarray(x[i:i + 64], dtype=np.float32)).to(device))
                               .float().cpu().numpy() for i in range(0, len(x), 64)])


def run_split_csv(ck: dict[str, Any], path: Path) -> Path:
    """The run's ``split.csv`` of checkpoint ``ck`` read from ``path``: the one it records, else
    (moved, or not recorded) the one beside the checkpoint (which may not exist)."""
    recorded = Path(ck.get("split_csv") or path.parent / "split.csv")
    return recorded if recorded.is_file() else path.parent / "split.csv"


def calibrate_checkpoint(path: str | Path, data_root: str | Path | None = None) -> dict[str, Any]:
    """A ``best.pt`` / ``last.pt`` (weights + config) -> the ``model.pt`` dict ``export`` needs:
    the weights scored on the run's validation split (its ``split.csv``), temperature, shift and
    thresholds fitted there. A ``model.pt`` is returned as it is.

    Raises ValueError when the checkpoint has no config (written by an older version) and
    FileNotFoundError when the split or validation films are not found."""
    import torch  # torch only once training runs

    # finetune's network structures import torch: only once a checkpoint is read
    from cxr_triage.training.finetune import network_for

    path = Path(path)
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if "thresholds" in ck:
        return cast(dict[str, Any], ck)
    if "config" not in ck:
        raise ValueError(f"{path}: checkpoint has no config (written by an older version): export the run's "
                         "model.pt, or retrain")
    cfg = TrainConfig(**{k: v for k, v in ck["config"].items() if k in TrainConfig.__dataclass_fields__})
    split_csv = run_split_csv(ck, path)
    if not split_csv.is_file():
        raise FileNotFoundError(f"{path}: the run's split.csv is not found (looked beside the checkpoint)")
    root = Path(data_root or ck.get("films_root") or cfg.data_root or Path(cfg.manifest).resolve().parent)
    val_e = trained_split(read_manifest(split_csv), "val", cfg)
    if not val_e:
        raise ValueError(f"{split_csv}: no validation films to calibrate {path.name} on")
    check_films(val_e, root)
    net = network_for(cfg, int(ck.get("n_outputs", 1)))
    net.load_state_dict(ck["model"])
    cache = Path(cfg.cache_dir) if cfg.cache_dir else path.parent / "cache"
    logits = batch_logits(net, load_inputs(val_e, root, cfg.spec(), cache, progress=False))
    cal = calibration(cfg, val_e, logits.astype(np.float64), selected(val_e, cfg), int(ck.get("epoch", 0)))
    log.info("calibrated checkpoint", extra={"checkpoint": str(path), "epoch": ck.get("epoch")})
    return model_file_dict(cfg, net, cal, split_csv, root)
