"""The training losses: the abnormal output's class- or source x label-balanced focal/BCE loss
plus the masked BCE of the other outputs (nodule/mass, the NIH findings), as one callable.

Every weight tensor is made on the training device, so the same loss serves CPU and CUDA runs
(a weight left on the CPU stopped the first CUDA run: ``Expected all tensors to be on the same
device``). Loss: MONAI ``FocalLoss`` (gamma 0 is class-balanced BCE; Lin et al., ICCV 2017).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def build_losses(balance: str, focal_gamma: float, n_out: int, nodule_weight: float, aux_weight: float,
                 pos_share: float, train_groups: Sequence[tuple[str, int]], device: Any,
                 ) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(loss_fn, multitask_loss).

    ``loss_fn(logit (N, 1), y (N, 1), idx (N,) or None, weight (N,) or None)``: the abnormal
    output's loss (``weight``: 0/1 per film, the mean over the films weighted 1). ``balance``
    "label": alpha = the normal share, both classes count equally; "source_label": each
    training film weighted by 1 / (number of films of its (source, label) group), ``idx`` being
    the films' positions in ``train_groups`` (without ``idx``: unweighted).
    ``multitask_loss(logits (N, K), y (N, K), known (N, K) in {0, 1}, idx)``: ``loss_fn`` on
    column 0 of the films whose column 0 is known plus, for K > 1, ``nodule_weight`` x the masked BCE of column 1 and
    ``aux_weight`` shared over columns 2.. (each column averaged over the films where it is known).
    All tensors given must be on ``device`` (``idx`` may be on the CPU).
    Raises ValueError for another ``balance``.
    """
    import torch  # torch and MONAI only once training runs
    from monai.losses import FocalLoss

    loss_fn: Callable[..., Any]
    if balance == "source_label":
        counts = {g: list(train_groups).count(g) for g in set(train_groups)}
        w = np.array([len(train_groups) / (len(counts) * counts[g]) for g in train_groups], dtype=np.float32)
        sample_w = torch.as_tensor(w, device=device)
        unweighted = FocalLoss(gamma=focal_gamma, use_softmax=False, reduction="none")

        def loss_fn(logit: Any, y: Any, idx: Any = None, weight: Any = None) -> Any:
            per = unweighted(logit, y).reshape(-1)
            per = per * sample_w[idx] if idx is not None else per
            return per.mean() if weight is None else _weighted_mean(per, weight)
    elif balance == "label":
        balanced = FocalLoss(gamma=focal_gamma, alpha=1.0 - pos_share, use_softmax=False, reduction="none")

        def loss_fn(logit: Any, y: Any, idx: Any = None, weight: Any = None) -> Any:
            per = balanced(logit, y).reshape(-1)
            return per.mean() if weight is None else _weighted_mean(per, weight)
    else:
        raise ValueError(f"balance must be label or source_label, not {balance!r}")
    task_w = torch.zeros(n_out, device=device)
    if n_out > 1:
        task_w[1] = nodule_weight
        task_w[2:] = aux_weight / max(1, n_out - 2)

    def multitask_loss(logits: Any, y: Any, known: Any, idx: Any = None) -> Any:
        # a film whose abnormal target is masked (a label conflict, targets.conflicting) counts for nothing
        loss = loss_fn(logits[:, :1], y[:, :1], idx, known[:, 0])
        if n_out > 1:
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 1:], y[:, 1:], reduction="none")
            per_task = (bce * known[:, 1:]).sum(0) / known[:, 1:].sum(0).clamp(min=1.0)
            loss = loss + (per_task * task_w[1:]).sum()
        return loss

    return loss_fn, multitask_loss


def _weighted_mean(per: Any, weight: Any) -> Any:
    """sum(per * weight) / max(1, sum(weight)): the mean over the films with weight 1 (no
    data-dependent branch, so it also runs on PyTorch's meta device)."""
    return (per * weight).sum() / weight.sum().clamp(min=1.0)
