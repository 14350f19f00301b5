"""Training on a frozen trunk's cached output (``TrainConfig.trunk_views`` > 0, EfficientNet).

The frozen stem and first ``k`` blocks run once per augmented view of every film
(:func:`trunk_features`); each epoch then draws one cached view per film
(:class:`ViewDataset`) and trains only the rest of the network (:func:`upper_model`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxr_triage.training.dataset import save_npy_atomic


def upper_model(net: Any, k: int) -> Any:
    """The trainable part on cached trunk features: a torch module with
    ``forward(f) = net.logit_from_trunk(f, k)`` (f: (N, C, h, w) -> logits (N, K))."""
    import torch  # torch only once training runs

    class Upper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, f: Any) -> Any:
            return self.net.logit_from_trunk(f, k)

    return Upper()


class ViewDataset:
    """Cached trunk features (views, N, C, h, w): each epoch draws one view per film.
    ``labels``/``known``: (N, K) targets and their mask (:func:`cxr_triage.training.targets.targets`)."""

    def __init__(self, feats: np.ndarray, labels: np.ndarray, known: np.ndarray):
        self.feats, self.labels, self.known = feats, labels, known
        self.view = np.zeros(len(labels), dtype=int)

    def set_epoch(self, seed: int) -> None:
        self.view = np.random.default_rng(seed).integers(0, self.feats.shape[0], len(self.labels))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": np.asarray(self.feats[self.view[i], i], dtype=np.float32),
                "label": self.labels[i], "known": self.known[i], "index": i}


def trunk_features(net: Any, inputs: np.ndarray, k: int, views: int, transform: Any, seed: int,
                   cache: Path | None, progress: bool = False) -> np.ndarray:
    """(views, N, C, h, w) float16 outputs of the frozen trunk for ``inputs`` (N, 1, S, S);
    view 0 is unaugmented, view v > 0 goes through ``transform`` seeded with ``seed * 7919 + v``.
    Read from / written to ``cache`` (a ``.npy`` file) when given."""
    import torch  # torch only once training runs

    if cache is not None and cache.exists():
        arr = np.load(cache)
        if arr.shape[:2] == (views, len(inputs)):
            return arr
    net.eval()
    device = next(net.parameters()).device
    out = None
    it: Any = range(views)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="trunk features", unit="view")
    with torch.no_grad():
        for v in it:
            if v:
                transform.set_random_state(seed=seed * 7919 + v)
            for i in range(0, len(inputs), 32):
                chunk = np.asarray(inputs[i:i + 32], dtype=np.float32)
                if v:
                    chunk = np.stack([np.asarray(transform({"image": c})["image"]) for c in chunk])
                f = net.features.trunk(torch.from_numpy(chunk).to(device), k).float().cpu().numpy()
                if out is None:
                    out = np.empty((views, len(inputs), *f.shape[1:]), dtype=np.float16)
                out[v, i:i + len(chunk)] = f
    assert out is not None
    if cache is not None:
        save_npy_atomic(cache, out)
    return out
