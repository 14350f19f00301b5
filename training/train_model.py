"""The model side of a training run: network, optimiser, schedule, weight average, losses.

AdamW with the pretrained trunk at ``backbone_lr`` x ``lr``, a cosine schedule with half an
epoch of linear warm-up, and (``ema`` > 0) an exponential moving average of the weights
(``torch.optim.swa_utils.AveragedModel``): the averaged weights are the ones validated,
checkpointed and exported. torch is imported inside the functions (the command line imports
this module and must start without torch).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from cxr_triage.training.distributed import Runtime
from cxr_triage.training.losses import build_losses
from cxr_triage.training.progress import say
from cxr_triage.training.train_config import TrainConfig
from cxr_triage.training.train_data import Loaders, TrainData
from cxr_triage.training.trunk import upper_model


@dataclass
class Model:
    """What one training step touches.

    ``net``: the trained network; ``model``: what the batches run through (``core`` of the
    loaders, DDP-wrapped under torchrun); ``ema``: the AveragedModel of ``net`` (None when
    ``ema`` is 0); ``eval_net``: the weights validated and saved (the average, else ``net``);
    ``eval_core``: ``eval_net`` as the validation loader's input needs it."""

    net: Any
    model: Any
    ema: Any
    eval_net: Any
    eval_core: Any
    opt: Any
    sched: Any
    loss_fn: Callable[..., Any]
    multitask_loss: Callable[..., Any]
    trunk: list[Any] = field(default_factory=list)  # the trainable parameters outside the output layers

    def head_only(self, on: bool) -> None:
        """Train the output layers alone (``on``: the trunk's gradients off) or everything trainable."""
        for p in self.trunk:
            p.requires_grad_(not on)

    def step(self, loss: Any) -> None:
        """One optimiser and schedule step on ``loss``, then the weight average's update."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.update_parameters(self.net)


def build_net(cfg: TrainConfig, rt: Runtime, n_out: int, init: Any = None, check_inputs: Any = None) -> Any:
    """The network of ``cfg.architecture`` with ``n_out`` outputs, on the run's device; a
    fine-tune's (``cfg.init_from``): ``init``'s network checked on ``check_inputs`` (N, 1, S, S),
    or its bare structure on --resume (:func:`cxr_triage.training.finetune.init_network`)."""
    # network imports torch at module level: only once training runs
    from cxr_triage.training.network import build_network

    if cfg.init_from:
        # finetune imports ONNX tooling: only for a fine-tune
        from cxr_triage.training.finetune import init_network

        return init_network(cfg, init, n_out, check_inputs).to(rt.device)
    return build_network(cfg.architecture, pretrained=cfg.pretrained, image_size=cfg.image_size,
                         freeze_blocks=cfg.freeze_blocks, n_outputs=n_out).to(rt.device)


def build_model(cfg: TrainConfig, rt: Runtime, data: TrainData, net: Any, loaders: Loaders,
                deadline: float | None = None) -> Model:
    """DDP wrap (under torchrun), AdamW (trunk at ``backbone_lr`` x ``lr``, heads at ``lr``),
    the weight average, the warm-up + cosine schedule (:func:`schedule_fraction`: over ``epochs``
    x ``steps_per_epoch``, or the time budget up to ``deadline`` when that ends first) and the
    losses (:func:`cxr_triage.training.losses.build_losses`)."""
    import torch  # torch only once training runs

    model = torch.nn.parallel.DistributedDataParallel(loaders.core) if rt.distributed else loaders.core
    head = [p for n, p in net.named_parameters() if p.requires_grad and is_head(n)]
    trunk = [p for n, p in net.named_parameters() if p.requires_grad and not is_head(n)]
    opt = torch.optim.AdamW([{"params": trunk, "lr": cfg.lr * cfg.backbone_lr}, {"params": head, "lr": cfg.lr}],
                            weight_decay=cfg.weight_decay)
    # The weights that are validated and saved: an exponential moving average of the trained
    # ones (cfg.ema > 0; steadier on small validation sets) or the trained ones themselves.
    ema = ema_model(net, cfg.ema) if cfg.ema > 0 else None
    eval_net = ema.module if ema is not None else net
    total = max(1, cfg.epochs * loaders.steps_per_epoch)
    warm = max(1, loaders.steps_per_epoch // 2)
    done = schedule_fraction(total, time.time(), deadline)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * done(s))))
    loss_fn, multitask_loss = build_losses(
        cfg.balance, cfg.focal_gamma, data.n_out, cfg.nodule_weight, cfg.aux_weight, float(data.y_train.mean()),
        [(e.source, e.label) for e in data.train_e], rt.device)
    return Model(net=net, model=model, ema=ema, eval_net=eval_net,
                 eval_core=upper_model(eval_net, cfg.freeze_blocks) if loaders.use_trunk else eval_net,
                 opt=opt, sched=sched, loss_fn=loss_fn, multitask_loss=multitask_loss, trunk=trunk)


def is_head(name: str) -> bool:
    """Whether parameter ``name`` belongs to an output layer (``fc.*``, or ``members.K.fc.*`` of an ensemble)."""
    return name.startswith("fc.") or ".fc." in name


def schedule_fraction(total_steps: int, start: float, deadline: float | None) -> Callable[[int], float]:
    """Step -> the share of the run done, in [0, 1]: of ``total_steps``, or of the time from
    ``start`` to ``deadline`` (epoch seconds) when that is further along, so the cosine reaches
    its end with whichever rule ends the run (a budget alone has no meaningful step count)."""
    span = None if deadline is None else max(1e-6, deadline - start)

    def done(step: int) -> float:
        by_steps = min(step, total_steps) / total_steps
        return by_steps if span is None else max(by_steps, min(1.0, (time.time() - start) / span))

    return done


def ema_decay(max_decay: float, step: int) -> float:
    """The average's decay at update ``step`` (1, 2, ...): ``min(max_decay, (1 + step) / (10 + step))``,
    so the first updates follow the trained weights closely (warm-up of the average)."""
    return min(max_decay, (1 + step) / (10 + step))


def ema_model(net: Any, max_decay: float) -> Any:
    """An ``AveragedModel`` of ``net``: after update ``s``, each parameter is
    ``d * average + (1 - d) * trained`` with ``d = ema_decay(max_decay, s)`` (PyTorch's EMA
    update, ``get_ema_multi_avg_fn``); buffers (batch-norm statistics) are copied from ``net``.
    It starts from ``net``'s current weights (counted as the first average), frozen."""
    import torch  # torch only once training runs
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    def warmed_up_ema(averaged: Any, current: Any, n_averaged: Any) -> None:
        get_ema_multi_avg_fn(ema_decay(max_decay, int(n_averaged)))(averaged, current, n_averaged)

    ema = AveragedModel(net, multi_avg_fn=warmed_up_ema, use_buffers=False)
    ema.requires_grad_(False)
    with torch.no_grad():
        ema.n_averaged.fill_(1)  # the copy of net is the first average: update s sees n_averaged == s
    return ema


def restore(model: Model, ck: dict[str, Any], cfg: TrainConfig, rt: Runtime) -> dict[str, Any]:
    """Load a ``last.pt`` (trained and averaged weights, optimiser, schedule) into ``model``;
    returns the run's state (epoch, best AUROC and epoch, bad epochs, history) with a fresh
    patience."""
    model.net.load_state_dict(ck.get("trained", ck["model"]))
    if model.ema is not None:
        model.ema.module.load_state_dict(ck["model"])
    model.opt.load_state_dict(ck["optimizer"])
    model.sched.load_state_dict(ck["scheduler"])
    state: dict[str, Any] = ck["state"]
    state["bad_epochs"] = 0  # a resumed run gets a fresh patience, however the last one stopped
    if rt.main:
        say(f"resumed after epoch {state['epoch']} (best validation AUROC {state['best_auroc']:.4f} "
            f"at epoch {state['best_epoch']}); patience starts afresh ({cfg.patience} epochs)")
    return state


def new_state() -> dict[str, Any]:
    """The state of a run before its first epoch."""
    return {"epoch": 0, "best_auroc": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": []}
