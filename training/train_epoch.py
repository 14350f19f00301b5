"""One epoch of a training run: the batches, the validation, the early-stopping bookkeeping.

The time budget (``max_minutes``) is checked after every batch on every rank
(:class:`TimeBudget`): the epoch under way stops, is validated and the run then calibrates.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxr_triage.training.distributed import Runtime, any_rank, gather
from cxr_triage.training.progress import epoch_of, eta_minutes
from cxr_triage.training.train_config import TrainConfig
from cxr_triage.training.train_data import Loaders, TrainData
from cxr_triage.training.train_metrics import auroc, per_source, selection_score
from cxr_triage.training.train_model import Model


@dataclass(frozen=True)
class TimeBudget:
    """The wall-clock end of the epochs (``deadline``, epoch seconds; None: no budget)."""

    deadline: float | None

    @classmethod
    def of(cls, cfg: TrainConfig, started: float) -> TimeBudget:
        """``max_minutes`` from ``started`` (0: no budget)."""
        return cls(started + cfg.max_minutes * 60 if cfg.max_minutes > 0 else None)

    def over(self) -> bool:
        """True on every rank once any rank is past the deadline (False without a budget)."""
        return self.deadline is not None and any_rank(time.time() >= self.deadline)

    def left_s(self) -> float | None:
        """Seconds left (negative once over; None without a budget)."""
        return None if self.deadline is None else self.deadline - time.time()


def train_epoch(cfg: TrainConfig, rt: Runtime, loaders: Loaders, model: Model, epoch: int,
                budget: TimeBudget) -> list[float]:
    """Train ``loaders.steps_per_epoch`` batches of ``epoch`` (fewer when the time budget runs
    out); returns the batches' losses."""
    import torch  # torch only once training runs

    loaders.set_epoch(epoch, cfg.seed, rt.rank)
    model.model.train()
    losses = []
    it: Any = loaders.train
    if cfg.progress and rt.main:
        from tqdm import tqdm

        it = tqdm(loaders.train, total=loaders.steps_per_epoch, desc=epoch_of(epoch, cfg.epochs), unit="batch",
                  mininterval=10, leave=False)
    for step, batch in enumerate(it):
        if step >= loaders.steps_per_epoch:
            break
        if step and budget.over():
            break  # over budget: validate what this epoch trained, then stop
        x = batch["image"].to(rt.device)
        y = batch["label"].to(rt.device).float().reshape(len(x), -1)
        known = batch["known"].to(rt.device).float().reshape(len(x), -1)
        loss = model.multitask_loss(model.model(x), y, known,
                                    torch.as_tensor(np.asarray(batch["index"]), device=rt.device))
        model.step(loss)
        losses.append(float(loss.detach()))
    return losses


def predict(model: Any, loader: Any, device: Any) -> tuple[np.ndarray, np.ndarray]:
    """(indices (N,), logits (N, K)) over a loader, eval mode, no grad."""
    import torch  # torch only once training runs

    idx, logits = [], []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            logits.append(model(batch["image"].to(device)).float().cpu().numpy())
            idx.append(np.asarray(batch["index"]))
    if not idx:
        return np.zeros(0, dtype=int), np.zeros((0, 1), dtype=np.float32)
    return np.concatenate(idx), np.concatenate(logits)


def validate(cfg: TrainConfig, rt: Runtime, data: TrainData, loaders: Loaders, model: Model, epoch: int,
             losses: list[float], t0: float) -> tuple[dict[str, Any], float, float]:
    """(the epoch's metrics row, the selection metric, the nodule/mass AUROC): the averaged
    weights scored on every rank's validation shard, gathered, and the training loss averaged
    over the ranks. ``t0``: the epoch's start (epoch seconds)."""
    import torch  # torch only once training runs

    parts = gather(predict(model.eval_core, loaders.val, rt.device))
    val_all = np.zeros((len(data.val_e), data.n_out), dtype=np.float64)
    for pidx, plog in parts:
        val_all[pidx] = plog
    val_logits, sel, y_val = val_all[:, 0], data.sel, data.y_val
    nod_auc = (auroc(val_all[data.nod_val, 1], data.nod_truth[data.nod_val])
               if data.n_out > 1 and data.nod_val.any() else float("nan"))
    train_loss = float(np.mean(gather(float(np.mean(losses)) if losses else float("nan"))))
    select = selection_score(cfg.select_metric, val_logits[sel], y_val[sel],
                             [e for e, m in zip(data.val_e, sel) if m], nod_auc)
    row = {
        "epoch": epoch, "train_loss": round(train_loss, 5),
        "val_loss": round(float(model.loss_fn(torch.as_tensor(val_logits[sel, None], device=rt.device),
                                              torch.as_tensor(y_val[sel, None], device=rt.device))), 5),
        "val_auroc": round(auroc(val_logits[sel], y_val[sel]), 5), "val_select": round(select, 5),
        "val_auroc_by_source": {k: round(v["auroc"], 4) for k, v in per_source(val_logits, data.val_e).items()},
        "val_nodule_auroc": round(nod_auc, 4),
        "lr": model.opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 1),
    }
    return row, select, nod_auc


def record(state: dict[str, Any], row: dict[str, Any], select: float, epochs: int, left_s: float | None) -> bool:
    """Add the epoch's ``row`` to ``state`` (history, best selection metric and epoch, epochs
    without a gain) and its ETA to ``row`` (``left_s``: seconds of the time budget left, None
    without one); True when the epoch improved on the best by > 1e-4."""
    state["history"].append(row)
    improved = not math.isnan(select) and select > state["best_auroc"] + 1e-4
    if improved:
        state.update(best_auroc=select, best_epoch=row["epoch"], bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    state["epoch"] = row["epoch"]
    row["eta_min"] = round(eta_minutes(state["history"], epochs - row["epoch"], left_s), 2)
    return improved
