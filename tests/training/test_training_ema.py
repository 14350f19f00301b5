"""The weight average (``torch.optim.swa_utils.AveragedModel``) gives the averaged weights of
the hand-written EMA it replaced: decay min(ema, (1 + s) / (10 + s)) at update s, starting
from the initial weights, batch-norm buffers copied."""

from __future__ import annotations

import copy

import torch

from cxr_triage.training.train_model import ema_decay, ema_model


def _reference_ema(steps: list[dict[str, torch.Tensor]], start: torch.nn.Module, net: torch.nn.Module,
                   decay: float) -> torch.nn.Module:
    """The former hand-written update, applied to each recorded state of ``net``."""
    ema = copy.deepcopy(start)
    for s, state in enumerate(steps, start=1):
        net.load_state_dict(state)
        d = min(decay, (1 + s) / (10 + s))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.mul_(d).add_(p.detach(), alpha=1.0 - d)
            for be, b in zip(ema.buffers(), net.buffers()):
                be.copy_(b)
    return ema


def test_averaged_model_matches_the_former_ema_update() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    start = copy.deepcopy(net)
    ema = ema_model(net, 0.98)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    states = []
    for _ in range(40):
        loss = net(torch.randn(8, 1, 8, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update_parameters(net)
        states.append(copy.deepcopy(net.state_dict()))
    ref = _reference_ema(states, start, copy.deepcopy(net), 0.98)
    got, want = ema.module.state_dict(), ref.state_dict()
    assert list(got) == list(want)  # same keys: checkpoints load into the plain network
    for k in want:
        assert torch.allclose(got[k].float(), want[k].float(), rtol=1e-6, atol=1e-7), k
    assert not all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), net.parameters()))
    assert not any(p.requires_grad for p in ema.parameters())


def test_decay_warms_up_to_the_configured_value() -> None:
    assert ema_decay(0.98, 1) == 2 / 11
    assert ema_decay(0.98, 1000) == 0.98
