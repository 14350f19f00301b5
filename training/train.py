"""Train a normal-vs-abnormal classifier from a manifest; calibrate it on validation.

One entry point for a laptop, a 2-core CI box or several machines: under ``torchrun`` it
uses DistributedDataParallel (gloo on CPU, NCCL on GPU), each rank training on its shard and
validation predictions gathered from all ranks, so every rank takes the same early-stopping
decision; only rank 0 writes files.

Run folder (``out``): ``split.csv`` (the manifest with its split, reused on --resume),
``metrics.csv``/``metrics.jsonl`` (one row per epoch), ``last.pt`` (resume state),
``best.pt`` (best validation AUROC), ``model.pt`` (best weights + temperature + thresholds +
validation metrics: what ``export`` reads), ``train_summary.json`` (settings, split, result and
one entry per run under ``runs``: a resumed run appends), ``test_report.json``/``.html`` (the
test split scored by the calibrated model, :mod:`cxr_triage.training.report`).

Every checkpoint carries its config, so any of them exports (``best.pt``/``last.pt`` of a
stopped run are calibrated on the validation split at export, :func:`calibrate_checkpoint`).

Budget: the one the user gave: ``epochs``, ``max_minutes`` of wall-clock time (checked after
every batch: the epoch under way is validated and the run calibrates and stops; given alone,
the epochs are unbounded, ``progress.EPOCHS_UNDER_BUDGET``), or both, whichever comes first;
``patience`` stops either early (fresh on --resume). A bar shows the whole run with its ETA and
each epoch prints one line with the validation AUROC, the epoch's seconds and the time left.
"""


from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cxr_triage.training import distributed
from cxr_triage.training.checkpoints import (
    calibrate_checkpoint,
    checkpoint_info,
    ensure_best,
    load_resume,
    save_epoch,
)
from cxr_triage.training.distributed import Runtime
from cxr_triage.training.finetune import apply_init, check_inputs, compare_with_init, load_init, mix_bundled
from cxr_triage.training.progress import (
    advance,
    epoch_line,
    log_epoch,
    plan_line,
    run_bar,
    say,
    warn_small_test_split,
)
from cxr_triage.training.train_config import TrainConfig
from cxr_triage.training.train_data import Loaders, TrainData, build_loaders, load_data
from cxr_triage.training.train_epoch import TimeBudget, record, train_epoch, validate
from cxr_triage.training.train_finish import finish, run_record
from cxr_triage.training.train_model import Model, build_model, build_net, new_state, restore

__all__ = ["TrainConfig", "calibrate_checkpoint", "train"]


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train, early-stop on the validation selection metric, calibrate on validation; returns
    the summary (``train_summary.json``; empty on ranks other than 0).

    Raises ValueError (no manifest, unusable split) and FileNotFoundError (missing films)."""
    started = time.time()
    cfg, resume_ck = load_resume(cfg, resume)
    init = None
    if cfg.mix_bundled and resume_ck is None:
        cfg = mix_bundled(cfg)
    if cfg.init_from and resume_ck is None:
        init = load_init(cfg.init_from)
        cfg = apply_init(cfg, init)
    rt = start(cfg)
    data = load_data(cfg, rt, resumed=resume_ck is not None)
    if rt.main:
        warn_small_test_split(data.entries)
    net = build_net(cfg, rt, data.n_out, init, check_inputs(cfg, data.entries, data.root) if init else None)
    loaders = build_loaders(cfg, rt, data, net)
    budget = TimeBudget.of(cfg, started)
    model = build_model(cfg, rt, data, net, loaders, budget.deadline)
    state = restore(model, resume_ck, cfg, rt) if resume_ck is not None else new_state()
    first_epoch = state["epoch"] + 1
    stopped = run_epochs(cfg, rt, data, loaders, model, state, budget)
    summary: dict[str, Any] = {}
    if rt.main:
        ensure_best(Path(cfg.out), model, state, checkpoint_info(cfg, data))
        if stopped != "epochs":
            say(f"stopped after epoch {state['epoch']}: {stopped}")
        run = run_record(cfg, started, resume_ck is not None, first_epoch, state, stopped)
        summary = finish(cfg, rt, data, loaders, state, started, run)
        if cfg.init_from and summary:
            summary["init_comparison"] = compare_with_init(cfg, data.entries, data.root)
            (Path(cfg.out) / "train_summary.json").write_text(json.dumps(summary, indent=2, default=float))
    distributed.stop(rt)
    return summary


def start(cfg: TrainConfig) -> Runtime:
    """The process's runtime (threads, torchrun group, device), the run folder made, every RNG seeded."""
    rt = distributed.start(cfg.threads)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    distributed.seed_everything(cfg.seed)
    return rt


def run_epochs(cfg: TrainConfig, rt: Runtime, data: TrainData, loaders: Loaders, model: Model,
               state: dict[str, Any], budget: TimeBudget) -> str:
    """Epochs ``state['epoch'] + 1`` .. ``cfg.epochs``; returns what ended them: ``epochs``,
    ``patience`` (that many epochs without a gain) or ``time budget`` (a run always trains at
    least one epoch, so there is something to export)."""
    first_epoch = state["epoch"] + 1
    info = checkpoint_info(cfg, data)
    bar = None
    if rt.main:
        minutes = cfg.max_minutes if budget.deadline is not None else 0.0
        say(plan_line(first_epoch, cfg.epochs, minutes, cfg.patience)
            + f"; {loaders.steps_per_epoch} batches of {cfg.batch_size} an epoch (on {rt.device})")
        bar = run_bar(cfg.progress, first_epoch, cfg.epochs, minutes)
    try:
        for epoch in range(first_epoch, cfg.epochs + 1):
            if state["bad_epochs"] >= cfg.patience:
                return "patience"
            if epoch > first_epoch and budget.over():
                return "time budget"
            t0 = time.time()
            cut = run_epoch(cfg, rt, data, loaders, model, state, budget, epoch, info)
            advance(bar, time.time() - t0, state["history"][-1]["eta_min"] if state["history"] else float("nan"),
                    budget.left_s())
            if (epoch < cfg.epochs or cut) and budget.over():  # the last epoch cut short: the budget ended it
                return "time budget"
        return "epochs"
    finally:
        if bar is not None:
            bar.close()


def run_epoch(cfg: TrainConfig, rt: Runtime, data: TrainData, loaders: Loaders, model: Model,
              state: dict[str, Any], budget: TimeBudget, epoch: int, info: dict[str, Any]) -> bool:
    """Train and validate ``epoch``, update ``state``; rank 0 logs the row, saves ``last.pt``
    (and ``best.pt`` when it improved; ``info``: :func:`checkpoint_info`) and prints the line.
    Returns True when the time budget cut the epoch's batches short."""
    t0 = time.time()
    if cfg.head_epochs:
        model.head_only(epoch <= cfg.head_epochs)
    losses = train_epoch(cfg, rt, loaders, model, epoch, budget)
    row, select, nod_auc = validate(cfg, rt, data, loaders, model, epoch, losses, t0)
    left_s = budget.left_s()
    improved = record(state, row, select, cfg.epochs, left_s)
    if rt.main:
        out = Path(cfg.out)
        log_epoch(out, row)
        save_epoch(out, model, state, select, improved, info)
        say(epoch_line(row, cfg.epochs, state, select, nod_auc, left_s))
    return len(losses) < loaders.steps_per_epoch
