"""training/losses.py: the values of the balanced and multi-task losses, and every weight on the
training device.

The first CUDA run of `make train` (on a lent H100) stopped at its first step with ``Expected all
tensors to be on the same device``: the task weights were made on the CPU. CI has no GPU, so the
device test uses PyTorch's ``meta`` device, which refuses to mix with CPU tensors the same way.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cxr_triage.training.losses import build_losses  # noqa: E402

GROUPS = [("nih-cxr14", 1), ("nih-cxr14", 1), ("nih-cxr14", 0), ("rsna-pneumonia", 1)]
N_OUT = 16


def _batch(device: str, n: int = 4) -> tuple:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, N_OUT, generator=g)
    y = (torch.rand(n, N_OUT, generator=g) > 0.5).float()
    known = (torch.rand(n, N_OUT, generator=g) > 0.3).float()
    return logits.to(device), y.to(device), known.to(device)


@pytest.mark.parametrize("balance", ["label", "source_label"])
def test_every_weight_lives_on_the_training_device(balance: str) -> None:
    _, mt = build_losses(balance, 0.0, N_OUT, 1.0, 0.3, 0.75, GROUPS, torch.device("meta"))
    loss = mt(*_batch("meta"), torch.arange(4))          # indices come from the loader, on the CPU
    assert loss.device.type == "meta" and loss.shape == ()


def test_weights_left_on_the_cpu_are_caught_by_the_meta_device() -> None:
    """The check above can fail: the same call with the weights on the CPU raises."""
    _, mt = build_losses("label", 0.0, N_OUT, 1.0, 0.3, 0.75, GROUPS, torch.device("cpu"))
    with pytest.raises((RuntimeError, ValueError), match="device"):
        mt(*_batch("meta"), None)


def _bce(z: float, t: float) -> float:
    p = 1.0 / (1.0 + math.exp(-z))
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def test_values_label_balance_plus_masked_tasks() -> None:
    pos_share = 0.75
    loss_fn, mt = build_losses("label", 0.0, N_OUT, 2.0, 0.7, pos_share, GROUPS, torch.device("cpu"))
    logits, y, known = _batch("cpu")
    L, Y, K = logits.double().numpy(), y.double().numpy(), known.double().numpy()
    alpha = 1.0 - pos_share
    per_film = [(alpha if Y[i, 0] else 1 - alpha) * _bce(L[i, 0], Y[i, 0]) for i in range(4)]
    main = np.mean(per_film)
    # column 0 counts only where known (a label conflict is masked, issue 22)
    main_known = sum(K[i, 0] * per_film[i] for i in range(4)) / max(1.0, K[:, 0].sum())
    per_task = [sum(K[i, j] * _bce(L[i, j], Y[i, j]) for i in range(4)) / max(1.0, K[:, j].sum())
                for j in range(1, N_OUT)]
    expected = main_known + 2.0 * per_task[0] + (0.7 / (N_OUT - 2)) * sum(per_task[1:])
    assert float(mt(logits, y, known)) == pytest.approx(expected, rel=1e-5)
    assert float(loss_fn(logits[:, :1], y[:, :1])) == pytest.approx(main, rel=1e-5)


def test_values_source_label_weights_each_film_by_its_group() -> None:
    loss_fn, _ = build_losses("source_label", 0.0, 1, 1.0, 0.3, 0.5, GROUPS, torch.device("cpu"))
    logits, y, _ = _batch("cpu")
    L = logits[:, 0].double().numpy()
    Y = np.array([1.0, 1.0, 0.0, 1.0])
    w = [4 / (3 * 2), 4 / (3 * 2), 4 / (3 * 1), 4 / (3 * 1)]      # 3 groups: sizes 2, 1, 1
    expected = np.mean([w[i] * _bce(L[i], Y[i]) for i in range(4)])
    got = loss_fn(logits[:, :1], torch.as_tensor(Y, dtype=torch.float32)[:, None], torch.arange(4))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="balance"):
        build_losses("view", 0.0, 1, 1.0, 0.3, 0.5, GROUPS, torch.device("cpu"))
