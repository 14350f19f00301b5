"""The end of a training run: ``model.pt``, ``train_summary.json`` and the test report.

The best weights (``best.pt``) are scored on the validation split and calibrated there
(:func:`~cxr_triage.training.val_calibration.calibration`, plus the heatmap's validation when
boxes are given); the test split is then scored by the calibrated weights with PyTorch
(``export`` checks that ONNX Runtime agrees within 1e-4) into ``test_report.json``/``.html``.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from cxr_triage.training import calibrate
from cxr_triage.training.checkpoints import batch_logits, model_file_dict
from cxr_triage.training.dataset import load_inputs
from cxr_triage.training.distributed import Runtime
from cxr_triage.training.heatmap import heatmap_validation
from cxr_triage.training.manifest import Entry
from cxr_triage.training.progress import say
from cxr_triage.training.report_figures import build_report
from cxr_triage.training.report_render import terminal_summary, write_report
from cxr_triage.training.split import summarise
from cxr_triage.training.train_config import RUN_CONTROL, TrainConfig
from cxr_triage.training.train_data import Loaders, TrainData
from cxr_triage.training.train_epoch import predict
from cxr_triage.training.trunk import upper_model
from cxr_triage.training.val_calibration import calibration


def run_record(cfg: TrainConfig, started: float, resumed: bool, first_epoch: int, state: dict[str, Any],
               stopped: str) -> dict[str, Any]:
    """This run's entry in the summary's ``runs``: start (UTC), resumed or not, its epochs,
    what stopped it and its run-control settings."""
    return {"started": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(timespec="seconds"),
            "resumed": resumed, "epochs": [first_epoch, state["epoch"]], "stopped_by": stopped,
            "run_control": {k: getattr(cfg, k) for k in RUN_CONTROL}}


def finish(cfg: TrainConfig, rt: Runtime, data: TrainData, loaders: Loaders, state: dict[str, Any],
           started: float, run: dict[str, Any]) -> dict[str, Any]:
    """Best weights -> validation logits -> temperature, thresholds, metrics -> ``model.pt``;
    the summary (appending this run to a resumed run's ``runs``); the test report. Returns the
    summary (also written to ``<out>/train_summary.json``)."""
    import torch  # torch only once training runs

    # finetune's network structures import torch: only once training runs
    from cxr_triage.training.finetune import network_for

    out = Path(cfg.out)
    net = network_for(cfg, data.n_out).to(rt.device)
    ck = torch.load(out / "best.pt", map_location=rt.device, weights_only=False)
    net.load_state_dict(ck["model"])
    idx, logits = predict(upper_model(net, cfg.freeze_blocks) if loaders.use_trunk else net, loaders.val, rt.device)
    val_logits = np.zeros((len(data.val_e), logits.shape[1]))
    val_logits[idx] = logits
    cal = calibration(cfg, data.val_e, val_logits, data.sel, state["best_epoch"])
    if cfg.boxes_csv:
        cal["heatmap"] = heatmap_validation(cfg, data.entries, data.root, net, cal, rt.device)
        cal["validation_metrics"]["heatmap"] = {k: v for k, v in cal["heatmap"].items() if k != "mask"}
    model_file = model_file_dict(cfg, net, cal, data.split_csv, data.root)
    torch.save(model_file, out / "model.pt")
    summary = _summary(cfg, rt, data, state, cal, model_file, _runs(out / "train_summary.json", run, started))
    if cfg.test_report:
        summary["test_report"] = write_test_report(cfg, out, data.entries, data.root, net, cal, rt.device)
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def _runs(summary_path: Path, run: dict[str, Any], started: float) -> list[dict[str, Any]]:
    """The summary's ``runs``: a resumed run's earlier entries, then this one with its minutes."""
    runs: list[dict[str, Any]] = []
    if run.get("resumed") and summary_path.exists():
        try:
            runs = list(json.loads(summary_path.read_text()).get("runs", []))
        except (OSError, ValueError):
            runs = []
    runs.append({**run, "minutes": round((time.time() - started) / 60, 2)})
    return runs


def _summary(cfg: TrainConfig, rt: Runtime, data: TrainData, state: dict[str, Any], cal: dict[str, Any],
             model_file: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "config": asdict(cfg), "split": summarise(data.entries), "epochs_run": state["epoch"],
        "world_size": rt.world,
        "best_epoch": state["best_epoch"], "best_val_auroc": state["best_auroc"],
        "temperature": cal["temperature"], "logit_shift": cal["logit_shift"], "thresholds": cal["thresholds"],
        "validation_metrics": cal["validation_metrics"],
        "training_manifest_sha256": model_file["training_manifest_sha256"],
        "minutes": round(sum(r.get("minutes", 0.0) for r in runs), 2),
        "stopped_by": runs[-1].get("stopped_by", ""),
        "runs": runs,
    }


def write_test_report(cfg: TrainConfig, out: Path, entries: list[Entry], root: Path, net: Any,
                      cal: dict[str, Any], device: Any) -> str:
    """The test split scored by the calibrated best weights (PyTorch; ``export`` checks that
    ONNX Runtime agrees within 1e-4) -> ``test_report.json/.html``; the terminal summary is
    printed. Returns the JSON path ('' when the split has no test films)."""
    test_e = [e for e in entries if e.split == "test"]
    if not test_e:
        say("test report: the split has no test films")
        return ""
    cache = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    logits = batch_logits(net, load_inputs(test_e, root, cfg.spec(), cache, progress=False), device)
    scores = calibrate.calibrated(logits[:, 0].astype(np.float64), cal["temperature"], cal["logit_shift"])
    rep = build_report(
        scores, test_e, cal["thresholds"], model=f"{out / 'model.pt'} (before export; PyTorch scores)",
        split="test", manifest=str(out / "split.csv"))
    paths = write_report(rep, out / "test_report.json")
    say(terminal_summary(rep))
    say(f"test report: {paths['json']} and {paths['html']}")
    return str(paths["json"])
