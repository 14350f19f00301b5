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

Budget: ``epochs`` and, optionally, ``max_minutes`` of wall-clock time (checked after every
batch: the epoch under way is validated and the run calibrates and stops). Each epoch prints
one line with the validation AUROC, the epoch's seconds and the estimated time left.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from cxr_triage.contract.files import file_sha256
from cxr_triage.contract.preprocessing import PreprocessSpec
from cxr_triage.evaluation.metrics import expected_calibration_error
from cxr_triage.training import calibrate
from cxr_triage.training.manifest import Entry, read_manifest, resolve, write_manifest
from cxr_triage.training.split import assign_splits, check_no_leakage, summarise

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything that defines a run (saved in the checkpoints and the summary)."""

    manifest: str
    out: str
    data_root: str = ""                 # films' root; default: the manifest's folder
    architecture: str = "effnet_lite0"  # effnet_lite0 | densenet121 | tiny
    pretrained: bool = True
    freeze_blocks: int = 6              # EfficientNet: stem + first n MBConv blocks frozen
    trunk_views: int = 0                # >0 (EfficientNet, pipeline_augment 0): cache the frozen trunk's output for
                                        # this many augmented views per film, train the rest on it
    image_size: int = 224
    harmonise_size: int = 224
    epochs: int = 12
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    focal_gamma: float = 0.0            # 0: class-balanced BCE (MONAI FocalLoss, gamma 0)
    balance: str = "label"              # label: classes weigh equally; source_label: every
                                        # (source, label) group weighs equally, so a source's
                                        # look cannot stand in for the label
    select_metric: str = "auroc"        # auroc | source_mean_auroc (mean of per-source AUROCs) |
                                        # source_mean_auroc_nodule (that mean with the nodule/mass AUROC)
    multitask: bool = True              # outputs: abnormal + nodule/mass + 14 NIH findings (targets.TASKS)
    nodule_weight: float = 1.0          # loss weight of the nodule/mass output
    aux_weight: float = 0.3             # loss weight of the 14 auxiliary findings (their mean)
    distill: float = 0.0                # weight of teacher soft targets (teacher_<finding> columns), 0..1
    pipeline_augment: float = 0.5       # >0: random image-pipeline chain on the decoded film before
                                        # preprocessing (training/augment.py), scaled by this probability
    ema: float = 0.98                   # >0: decay of an exponential moving average of the weights,
                                        # the weights validated, checkpointed and exported
    backbone_lr: float = 0.3            # learning rate of the pretrained trunk as a multiple of lr
    boxes_csv: str = ""                 # file,x,y,width,height boxes of findings (film pixels; files
                                        # relative to the CSV's folder): the heatmap's lung-field prior
                                        # (training films) and its pointing game (validation films);
                                        # none: the heatmap is not validated (not shown)
    patience: int = 4                   # epochs without val AUROC gain before stopping
    augment: float = 1.0                # augmentation strength (0 disables)
    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    train_sources: list[str] = field(default_factory=list)  # empty: all sources
    select_sources: list[str] = field(default_factory=list)  # val films for AUROC/calibration
    threads: int = 2
    max_steps_per_epoch: int = 0        # >0: cap (tests, smoke runs)
    progress: bool = True
    cache_dir: str = ""                 # default: <out>/cache
    max_minutes: float = 0.0            # >0: wall-clock budget of the epochs, in minutes
    test_report: bool = True            # score the test split at the end (test_report.json/.html)

    def spec(self) -> PreprocessSpec:
        return PreprocessSpec(size=self.image_size, harmonise_size=self.harmonise_size)


#: the settings a resumed run may change (how long and how it runs, not what it trains)
RUN_CONTROL = ("epochs", "max_minutes", "patience", "threads", "progress", "cache_dir", "test_report",
               "max_steps_per_epoch")


def resumed_config(saved: dict[str, Any], given: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """The config of a resumed run: the recipe saved in ``last.pt``, the run-control settings
    (:data:`RUN_CONTROL`) from the command line. Also returns one line per recipe setting the
    command line gave differently (ignored: a run cannot change what it trains half-way)."""
    fields = TrainConfig.__dataclass_fields__
    values = {k: v for k, v in saved.items() if k in fields}
    ignored = []
    for k in fields:
        if k in RUN_CONTROL:
            values[k] = getattr(given, k)
        elif k in ("manifest", "out", "data_root") and not getattr(given, k):
            continue
        elif k in values and getattr(given, k) != values[k] and getattr(given, k) != getattr(_DEFAULTS, k):
            ignored.append(f"{k}={getattr(given, k)!r} (the run keeps {values[k]!r})")
    values["out"] = given.out or values.get("out", "")
    return TrainConfig(**values), ignored


_DEFAULTS = TrainConfig(manifest="", out="")


# ---------------------------------------------------------------- distributed helpers

def _dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _init_distributed() -> bool:
    """Join the torchrun process group when launched by torchrun; False when single."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def _gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    rank, world = _dist_info()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def seed_everything(seed: int) -> None:
    import torch
    from monai.utils import set_determinism

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    set_determinism(seed=seed)


# ---------------------------------------------------------------- metrics

def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """MONAI's ROC AUC; NaN when only one class is present."""
    import torch
    from monai.metrics import compute_roc_auc

    y = np.asarray(labels)
    if y.min() == y.max():
        return float("nan")
    auc = compute_roc_auc(torch.as_tensor(np.asarray(scores, dtype=np.float64)), torch.as_tensor(y))
    return float(cast(float, auc))  # a float for 1-D input (MONAI's annotation covers every `average`)


def per_source(scores: np.ndarray, entries: list[Entry]) -> dict[str, dict[str, float]]:
    """AUROC (both classes present) and mean score by label for each source."""
    labels = np.array([e.label for e in entries])
    out: dict[str, dict[str, float]] = {}
    for src in sorted({e.source for e in entries}):
        m = np.array([e.source == src for e in entries])
        row = {"films": int(m.sum()), "abnormal": int(labels[m].sum()), "auroc": auroc(scores[m], labels[m])}
        for lab, name in ((0, "normal"), (1, "abnormal")):
            mm = m & (labels == lab)
            if mm.any():
                row[f"mean_score_{name}"] = float(np.mean(scores[mm]))
        out[src] = row
    return out


def split_table(entries: list[Entry]) -> str:
    """Patients, films, normal and abnormal films per source and split, as aligned text
    (printed at the start of a run; films outside train/val/test, e.g. excluded children, too)."""
    rows: dict[tuple[str, str], list[Any]] = {}
    for e in entries:
        r = rows.setdefault((e.source or "-", e.split or "-"), [set(), 0, 0, 0])
        r[0].add(e.patient_id)
        r[1] += 1
        r[2 if e.label == 0 else 3] += 1
    order = {"train": 0, "val": 1, "test": 2}
    head = ("source", "split", "patients", "films", "normal", "abnormal")
    body = [(src, sp, str(len(r[0])), str(r[1]), str(r[2]), str(r[3]))
            for (src, sp), r in sorted(rows.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9), kv[0][1]))]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r) for r in (head, *body))


def _eta_minutes(history: list[dict[str, Any]], epochs_left: int, budget_left_s: float | None) -> float:
    """Minutes left: mean epoch time so far x epochs left, capped by the time budget left."""
    if not history:
        return float("nan")
    mean = float(np.mean([r["seconds"] for r in history[-3:]]))
    left = mean * max(0, epochs_left)
    if budget_left_s is not None:
        left = min(left, max(0.0, budget_left_s))
    return left / 60


# ---------------------------------------------------------------- the run

def _prepare_split(cfg: TrainConfig, out: Path) -> tuple[list[Entry], Path, Path]:
    """(entries with their split, ``<out>/split.csv``, the folder its file paths are relative to).

    A new split's file paths are rewritten relative to the run folder, so ``split.csv`` is a
    manifest every command reads without ``--data-root`` (report, evaluate, commission, export).
    An existing ``split.csv`` (resume, or a new run in the same folder) is reused as it is."""
    import os

    split_csv = out / "split.csv"
    data_root = Path(cfg.data_root) if cfg.data_root else Path(cfg.manifest).resolve().parent
    if split_csv.exists():
        entries = read_manifest(split_csv)
        # written by this version: relative to the run folder; by an older one: to the data root
        probe = entries[: min(20, len(entries))]
        root = out if sum(resolve(e, out).is_file() for e in probe) >= sum(resolve(e, data_root).is_file()
                                                                           for e in probe) else data_root
    else:
        entries = assign_splits(read_manifest(cfg.manifest), cfg.val_fraction, cfg.test_fraction, cfg.seed)
        base = out.resolve()
        for e in entries:
            e.file = os.path.relpath(resolve(e, data_root).resolve(), base)
            if e.extra.get("twin"):  # the same film through another pipeline: a path like ``file``
                e.extra["twin"] = os.path.relpath((data_root / e.extra["twin"]).resolve(), base)
        root = out
    check_no_leakage(entries)
    return entries, split_csv, root


class _UpperModel:
    """Trainable part on cached trunk features: ``logit = net.logit_from_trunk(f, k)``."""

    @staticmethod
    def make(net, k: int):
        import torch

        class Upper(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, f):
                return self.net.logit_from_trunk(f, k)

        return Upper()


class _ViewDataset:
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


def trunk_features(net, inputs: np.ndarray, k: int, views: int, transform, seed: int,
                   cache: Path | None, progress: bool = False) -> np.ndarray:
    """(views, N, C, h, w) float16 outputs of the frozen trunk; view 0 is unaugmented."""
    import torch

    from cxr_triage.training.dataset import save_npy_atomic

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


def _predict(model, loader, device) -> tuple[np.ndarray, np.ndarray]:
    """(indices (N,), logits (N, K)) over a loader, eval mode, no grad."""
    import torch

    idx, logits = [], []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            logits.append(model(batch["image"].to(device)).float().cpu().numpy())
            idx.append(np.asarray(batch["index"]))
    if not idx:
        return np.zeros(0, dtype=int), np.zeros((0, 1), dtype=np.float32)
    return np.concatenate(idx), np.concatenate(logits)


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train, early-stop on validation AUROC, calibrate on validation; returns the summary."""
    import torch
    from monai.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from cxr_triage.training.augment import PipelineAugment
    from cxr_triage.training.dataset import (
        FilmDataset,
        cache_key,
        eval_transforms,
        load_films,
        load_inputs,
        make_dataset,
        train_transforms,
    )
    from cxr_triage.training.losses import build_losses
    from cxr_triage.training.network import build_network
    from cxr_triage.training.targets import n_outputs, nodule_known, nodule_truth, targets

    started = time.time()
    out = Path(cfg.out)
    last, best = out / "last.pt", out / "best.pt"
    resume_ck: dict[str, Any] | None = None
    if resume and last.exists():
        resume_ck = torch.load(last, map_location="cpu", weights_only=False)
        if "config" in resume_ck:
            cfg, ignored = resumed_config(resume_ck["config"], cfg)
            for line in ignored:
                _say(f"resume: ignored {line}")
    elif resume:
        _say(f"resume: no {last} yet, starting a new run")
    if not cfg.manifest:
        raise ValueError("no manifest: give --manifest (or --resume a run folder that has last.pt)")
    torch.set_num_threads(max(1, cfg.threads))
    distributed = _init_distributed()
    rank, world = _dist_info()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu")
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)

    entries, split_csv, root = _prepare_split(cfg, out)
    if rank == 0 and not split_csv.exists():
        write_manifest(entries, split_csv)
    train_e = [e for e in entries if e.split == "train" and (not cfg.train_sources or e.source in cfg.train_sources)]
    val_e = [e for e in entries if e.split == "val" and (not cfg.train_sources or e.source in cfg.train_sources)]
    if rank == 0:
        _say(f"split ({split_csv}{', reused' if resume_ck else ''}):\n{split_table(entries)}")
        if cfg.train_sources:
            _say(f"training and validating on source(s) {', '.join(cfg.train_sources)} only")
    if not train_e or not val_e:
        raise ValueError("the split has no training or no validation films"
                         + (f" from the source(s) {', '.join(cfg.train_sources)}" if cfg.train_sources else ""))
    if len({e.label for e in val_e}) < 2:
        raise ValueError("the validation split needs normal and abnormal films (for AUROC and thresholds): "
                         "add films or raise --val-fraction")
    _check_films(train_e + val_e, root)
    sel = np.array([not cfg.select_sources or e.source in cfg.select_sources for e in val_e])
    spec = cfg.spec()
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    # Rank 0 fills the cache first; the others then read it.
    if rank == 0:
        x_train = load_inputs(train_e, root, spec, cache_dir, cfg.progress)
        x_val = load_inputs(val_e, root, spec, cache_dir, cfg.progress)
    if distributed:
        torch.distributed.barrier()
    if rank != 0:
        x_train = load_inputs(train_e, root, spec, cache_dir, False)
        x_val = load_inputs(val_e, root, spec, cache_dir, False)
    y_train = np.array([e.label for e in train_e], dtype=np.float32)
    y_val = np.array([e.label for e in val_e], dtype=np.float32)
    t_train, k_train = targets(train_e, cfg.multitask, cfg.distill)
    t_val, k_val = targets(val_e, cfg.multitask, 0.0)
    n_out = n_outputs(cfg.multitask)
    nod_val = nodule_known(val_e) & sel
    nod_truth = nodule_truth(val_e)
    if rank == 0 and cfg.multitask:
        _say(f"targets: {int(k_train[:, 1].sum())} training films with a known nodule/mass status "
             f"({int((t_train[:, 1] * k_train[:, 1] >= 0.5).sum())} positive), teacher weight {cfg.distill:g}")

    net = build_network(cfg.architecture, pretrained=cfg.pretrained, image_size=cfg.image_size,
                        freeze_blocks=cfg.freeze_blocks, n_outputs=n_out).to(device)
    tf_train = train_transforms(cfg.augment, spatial_only=cfg.pipeline_augment > 0)
    use_films = cfg.pipeline_augment > 0
    use_trunk = (cfg.trunk_views > 0 and cfg.architecture == "effnet_lite0" and cfg.freeze_blocks > 0
                 and not use_films)
    if use_trunk:
        k, views = cfg.freeze_blocks, cfg.trunk_views
        tag = f"k{k}_v{views}_s{cfg.seed}_a{cfg.augment:g}_p{int(cfg.pretrained)}"
        val_tag = f"k{k}_p{int(cfg.pretrained)}"
        paths = {n: cache_dir / f"trunk_{cache_key(e, root, spec)}_{tag if n == 'train' else val_tag}.npy"
                 for n, e in (("train", train_e), ("val", val_e))}
        feats = {}
        for phase in ((0,) if not distributed else (0, 1)):
            if (rank == 0) == (phase == 0):
                feats["train"] = trunk_features(net, x_train, k, views, tf_train, cfg.seed, paths["train"], cfg.progress and rank == 0)
                feats["val"] = trunk_features(net, x_val, k, 1, None, cfg.seed, paths["val"])
            if distributed and phase == 0:
                torch.distributed.barrier()
        ds_train: Any = _ViewDataset(feats["train"], t_train, k_train)
        ds_val: Any = _ViewDataset(feats["val"], t_val, k_val)
        model_core = _UpperModel.make(net, k)
    elif use_films:
        films = load_films(train_e, root, max(512, 2 * spec.size), cache_dir, cfg.progress and rank == 0)
        ds_train = FilmDataset(films, t_train, k_train, spec, PipelineAugment(cfg.pipeline_augment), tf_train,
                               seed=cfg.seed * 100 + rank)
        ds_val = make_dataset(x_val, t_val, eval_transforms(), k_val)
        model_core = net
    else:
        ds_train = make_dataset(x_train, t_train, tf_train, k_train)
        ds_val = make_dataset(x_val, t_val, eval_transforms(), k_val)
        model_core = net
    train_sampler: DistributedSampler[Any] | None = (
        DistributedSampler(ds_train, world, rank, shuffle=True, seed=cfg.seed) if distributed else None)
    val_sampler: DistributedSampler[Any] | None = (
        DistributedSampler(ds_val, world, rank, shuffle=False) if distributed else None)
    gen = torch.Generator().manual_seed(cfg.seed)
    dl_train = DataLoader(ds_train, batch_size=cfg.batch_size, shuffle=train_sampler is None,
                          sampler=train_sampler, num_workers=0, generator=gen, drop_last=len(ds_train) > cfg.batch_size)
    dl_val = DataLoader(ds_val, batch_size=64, shuffle=False, sampler=val_sampler, num_workers=0)

    model = torch.nn.parallel.DistributedDataParallel(model_core) if distributed else model_core
    head = [p for p in net.fc.parameters() if p.requires_grad]
    trunk = [p for n, p in net.named_parameters() if p.requires_grad and not n.startswith("fc.")]
    opt = torch.optim.AdamW([{"params": trunk, "lr": cfg.lr * cfg.backbone_lr}, {"params": head, "lr": cfg.lr}],
                            weight_decay=cfg.weight_decay)
    # The weights that are validated and saved: an exponential moving average of the trained
    # ones (cfg.ema > 0; steadier on small validation sets) or the trained ones themselves.
    ema_net = _ema_copy(net) if cfg.ema > 0 else None
    eval_net = ema_net if ema_net is not None else net
    eval_core = _UpperModel.make(eval_net, cfg.freeze_blocks) if use_trunk else eval_net
    steps_per_epoch = len(dl_train) if not cfg.max_steps_per_epoch else min(len(dl_train), cfg.max_steps_per_epoch)
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = max(1, steps_per_epoch // 2)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    ema_steps = [0]
    loss_fn, multitask_loss = build_losses(
        cfg.balance, cfg.focal_gamma, n_out, cfg.nodule_weight, cfg.aux_weight, float(y_train.mean()),
        [(e.source, e.label) for e in train_e], device)

    state: dict[str, Any] = {"epoch": 0, "best_auroc": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": []}
    if resume_ck is not None:
        net.load_state_dict(resume_ck.get("trained", resume_ck["model"]))
        if ema_net is not None:
            ema_net.load_state_dict(resume_ck["model"])
        opt.load_state_dict(resume_ck["optimizer"])
        sched.load_state_dict(resume_ck["scheduler"])
        state = resume_ck["state"]
        if state["bad_epochs"] >= cfg.patience:  # a resumed run gets a fresh patience
            state["bad_epochs"] = 0
        if rank == 0:
            _say(f"resumed after epoch {state['epoch']} (best validation AUROC {state['best_auroc']:.4f} "
                 f"at epoch {state['best_epoch']}); running to epoch {cfg.epochs}")
    first_epoch = state["epoch"] + 1
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes > 0 else None
    deadline = started + budget_s if budget_s is not None else None
    stopped = "epochs"
    if rank == 0:
        plan = f"training epochs {first_epoch}..{cfg.epochs}, {steps_per_epoch} batches of {cfg.batch_size} each"
        _say(plan + (f", time budget {cfg.max_minutes:g} min" if budget_s else "") + f" (on {device})")
    ckpt_info = {"config": asdict(cfg), "architecture": cfg.architecture, "image_size": cfg.image_size,
                 "n_outputs": n_out,
                 "preprocessing": spec.to_dict(), "split_csv": str(split_csv.resolve()),
                 "films_root": str(root.resolve())}
    for epoch in range(first_epoch, cfg.epochs + 1):
        if state["bad_epochs"] >= cfg.patience:
            stopped = "patience"
            break
        if deadline is not None and epoch > first_epoch and _any_rank(time.time() >= deadline):
            stopped = "time budget"  # (a run always trains at least one epoch: something to export)
            break
        t0 = time.time()
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        gen.manual_seed(cfg.seed * 1000 + epoch)
        if use_trunk:
            ds_train.set_epoch(cfg.seed * 1000 + epoch)
        elif use_films:
            ds_train.set_epoch(epoch)
        else:
            tf_train.set_random_state(seed=cfg.seed * 1000 + epoch * 10 + rank)
        model.train()
        losses = []
        it: Any = dl_train
        if cfg.progress and rank == 0:
            from tqdm import tqdm

            it = tqdm(dl_train, total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", mininterval=10)
        for step, batch in enumerate(it):
            if step >= steps_per_epoch:
                break
            if deadline is not None and step and _any_rank(time.time() >= deadline):
                break  # over budget: validate what this epoch trained, then stop
            x = batch["image"].to(device)
            y = batch["label"].to(device).float().reshape(len(x), -1)
            known = batch["known"].to(device).float().reshape(len(x), -1)
            loss = multitask_loss(model(x), y, known, torch.as_tensor(np.asarray(batch["index"]), device=device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema_net is not None:
                ema_steps[0] += 1
                _ema_update(ema_net, net, min(cfg.ema, (1 + ema_steps[0]) / (10 + ema_steps[0])))
            losses.append(float(loss.detach()))
        idx, logits = _predict(eval_core, dl_val, device)
        parts = _gather((idx, logits))
        val_all = np.zeros((len(val_e), n_out), dtype=np.float64)
        for pidx, plog in parts:
            val_all[pidx] = plog
        val_logits = val_all[:, 0]
        nod_auc = auroc(val_all[nod_val, 1], nod_truth[nod_val]) if n_out > 1 and nod_val.any() else float("nan")
        train_loss = float(np.mean(_gather(float(np.mean(losses)) if losses else float("nan"))))
        by_src = per_source(val_logits[sel], [e for e, m in zip(val_e, sel) if m])
        if cfg.select_metric in ("source_mean_auroc", "source_mean_auroc_nodule"):
            vals = [v["auroc"] for v in by_src.values() if not math.isnan(v["auroc"])]
            if cfg.select_metric == "source_mean_auroc_nodule" and not math.isnan(nod_auc):
                vals.append(nod_auc)
            val_auc = float(np.mean(vals)) if vals else float("nan")
        else:
            val_auc = auroc(val_logits[sel], y_val[sel])
        row = {
            "epoch": epoch, "train_loss": round(train_loss, 5),
            "val_loss": round(float(loss_fn(torch.as_tensor(val_logits[sel, None], device=device),
                                             torch.as_tensor(y_val[sel, None], device=device))), 5),
            "val_auroc": round(auroc(val_logits[sel], y_val[sel]), 5), "val_select": round(val_auc, 5),
            "val_auroc_by_source": {k: round(v["auroc"], 4) for k, v in per_source(val_logits, val_e).items()},
            "val_nodule_auroc": round(nod_auc, 4),
            "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 1),
        }
        state["history"].append(row)
        improved = not math.isnan(val_auc) and val_auc > state["best_auroc"] + 1e-4
        if improved:
            state.update(best_auroc=val_auc, best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        left_s = None if deadline is None else deadline - time.time()
        row["eta_min"] = round(_eta_minutes(state["history"], cfg.epochs - epoch, left_s), 2)
        if rank == 0:
            _log_epoch(out, row)
            if improved:
                torch.save({"model": eval_net.state_dict(), "epoch": epoch, "val_auroc": val_auc, **ckpt_info}, best)
            torch.save({"model": eval_net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "state": state, "epoch": epoch, **ckpt_info,
                        **({"trained": net.state_dict()} if ema_net is not None else {})}, last)
            _say(f"epoch {epoch}/{cfg.epochs}: train loss {row['train_loss']:.4f}, validation AUROC "
                 f"{row['val_auroc']:.4f} (by source: "
                 + ", ".join(f"{k} {v:.3f}" for k, v in row["val_auroc_by_source"].items() if not math.isnan(v))
                 + (f"; nodule/mass {nod_auc:.3f}" if not math.isnan(nod_auc) else "")
                 + f"; selection {val_auc:.4f}, best {state['best_auroc']:.4f} at epoch {state['best_epoch']}), "
                 f"{row['seconds']:.0f} s; ETA {row['eta_min']:.1f} min"
                 + (f", {max(0.0, left_s) / 60:.1f} min of the budget left" if left_s is not None else ""))
        if deadline is not None and epoch < cfg.epochs and _any_rank(time.time() >= deadline):
            stopped = "time budget"
            break

    summary: dict[str, Any] = {}
    if rank == 0 and not best.exists():  # no epoch improved on -1 (validation AUROC undefined)
        torch.save({"model": eval_net.state_dict(), "epoch": state["epoch"], "val_auroc": float("nan"), **ckpt_info},
                   best)
    if rank == 0:
        if stopped != "epochs":
            _say(f"stopped after epoch {state['epoch']}: {stopped}")
        run = {"started": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(timespec="seconds"),
               "resumed": resume_ck is not None, "epochs": [first_epoch, state["epoch"]], "stopped_by": stopped,
               "run_control": {k: getattr(cfg, k) for k in RUN_CONTROL}}
        summary = _finish(cfg, out, split_csv, root, entries, val_e, y_val, sel, dl_val, device, state, started,
                          use_trunk, run)
    if distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return summary


def _ema_copy(net: Any) -> Any:
    """A frozen copy of ``net`` that :func:`_ema_update` keeps as the moving average."""
    import copy

    ema = copy.deepcopy(net)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


def _ema_update(ema: Any, net: Any, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net for the parameters; buffers (batch-norm
    statistics) are copied."""
    import torch

    with torch.no_grad():
        for pe, p in zip(ema.parameters(), net.parameters()):
            pe.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
        for be, b in zip(ema.buffers(), net.buffers()):
            be.copy_(b)


def _say(line: str) -> None:
    """A progress line for the person running the command (stderr; the JSON result is stdout)."""
    print(line, file=sys.stderr, flush=True)


def _any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on any rank (so every rank leaves the epoch at the same step)."""
    return any(_gather(bool(flag)))


def _check_films(entries: list[Entry], root: Path) -> None:
    """FileNotFoundError naming the first missing films (and how many) before any work starts."""
    missing = [e for e in entries if not resolve(e, root).is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{len(missing)} of {len(entries)} training/validation film(s) not found: "
                                f"{', '.join(e.file for e in missing[:5])}{more} (looked for "
                                f"{resolve(missing[0], root).resolve()}; wrong --data-root?)")


def _log_epoch(out: Path, row: dict[str, Any]) -> None:
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    flat = {k: v for k, v in row.items() if not isinstance(v, dict)}
    flat.update({f"val_auroc_{k}": v for k, v in row["val_auroc_by_source"].items()})
    path = out / "metrics.csv"
    new = not path.exists()
    with path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(flat))
        if new:
            w.writeheader()
        w.writerow(flat)


def calibration(cfg: TrainConfig, val_e: list[Entry], val_logits_all: np.ndarray, sel: np.ndarray,
                best_epoch: int) -> dict[str, Any]:
    """Temperature + shift, operating thresholds and validation metrics from validation logits
    (N, K) of the ``sel`` films: the fields ``model.pt`` stores. With a nodule/mass output
    (K > 1) it is calibrated and given operating points on the ``sel`` films whose
    nodule/mass status is known (:func:`nodule_calibration`)."""
    val_all = np.asarray(val_logits_all, dtype=np.float64).reshape(len(val_e), -1)
    val_logits = val_all[:, 0]
    y_val = np.array([e.label for e in val_e], dtype=np.float32)
    # The class-balanced loss trains as if both classes were equally common, so temperature
    # scaling gets a shift (Platt scaling) to match the validation mix; fitted on validation.
    z, y = val_logits[sel], y_val[sel]
    temperature, logit_shift = calibrate.fit_temperature_and_shift(z, y)
    ece_raw = expected_calibration_error(y, calibrate.calibrated(z, 1.0))
    shifted = val_logits + logit_shift
    scores = calibrate.calibrated(shifted[sel], temperature)
    thresholds = calibrate.operating_points(scores, y)
    all_scores = calibrate.calibrated(shifted, temperature)
    metrics = {
        "split": "val",
        "films": int(sel.sum()),
        "abnormal": int(y.sum()),
        "auroc": auroc(scores, y),
        "ece_before": ece_raw,
        "ece_after": expected_calibration_error(y, scores),
        "operating_points": {k: calibrate.rates(scores, y, t) for k, t in thresholds.items()},
        "by_source": per_source(all_scores, val_e),
        "best_epoch": best_epoch,
    }
    out = {"temperature": temperature, "logit_shift": logit_shift, "thresholds": thresholds,
           "validation_metrics": metrics}
    if val_all.shape[1] > 1:
        out.update(nodule_calibration(val_e, val_all[:, 1], sel))
        metrics["nodule"] = out.get("nodule_metrics", {})
    return out


def nodule_calibration(val_e: list[Entry], logits: np.ndarray, sel: np.ndarray) -> dict[str, Any]:
    """Temperature + shift and operating points (targets :data:`calibrate.NODULE_SENSITIVITIES`)
    of the nodule/mass output (N,) on the ``sel`` validation films whose nodule/mass status is
    known; ``nodule_thresholds`` is empty (the output is not used) when those films hold no
    Nodule/Mass film or no film without one."""
    from cxr_triage.training.targets import nodule_known, nodule_truth

    m = nodule_known(val_e) & sel
    y = nodule_truth(val_e)[m]
    z = np.asarray(logits, dtype=np.float64)[m]
    if y.size == 0 or y.min() == y.max():
        return {"nodule_temperature": 1.0, "nodule_shift": 0.0, "nodule_thresholds": {},
                "nodule_metrics": {"films": int(m.sum()), "positive": int(y.sum()),
                                   "note": "no Nodule/Mass films (or none without) in validation: output unused"}}
    t, shift = calibrate.fit_temperature_and_shift(z, y)
    scores = calibrate.calibrated(z + shift, t)
    thresholds = calibrate.operating_points(scores, y, calibrate.NODULE_SENSITIVITIES)
    return {"nodule_temperature": t, "nodule_shift": shift, "nodule_thresholds": thresholds,
            "nodule_metrics": {"films": int(m.sum()), "positive": int(y.sum()), "auroc": auroc(scores, y),
                               "operating_points": {k: calibrate.rates(scores, y, v) for k, v in thresholds.items()}}}


def _model_file_dict(cfg: TrainConfig, net: Any, cal: dict[str, Any], split_csv: Path, root: Path) -> dict[str, Any]:
    from cxr_triage.training.targets import TASKS, n_outputs

    return {
        "architecture": cfg.architecture, "image_size": cfg.image_size,
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},  # loadable without a GPU
        "n_outputs": n_outputs(cfg.multitask), "tasks": list(TASKS[:n_outputs(cfg.multitask)]),
        "preprocessing": cfg.spec().to_dict(), **cal,
        "training_manifest_sha256": file_sha256(cfg.manifest) if Path(cfg.manifest).is_file() else "",
        "config": asdict(cfg), "split_csv": str(split_csv), "films_root": str(root.resolve()),
    }


def calibrate_checkpoint(path: str | Path, data_root: str | Path | None = None) -> dict[str, Any]:
    """A ``best.pt`` / ``last.pt`` (weights + config) -> the ``model.pt`` dict ``export`` needs:
    the weights scored on the run's validation split (its ``split.csv``), temperature, shift and
    thresholds fitted there. A ``model.pt`` is returned as it is.

    Raises ValueError when the checkpoint has no config (written by an older version) and
    FileNotFoundError when the split or validation films are not found."""
    import torch

    from cxr_triage.training.dataset import load_inputs
    from cxr_triage.training.network import build_network

    path = Path(path)
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if "thresholds" in ck:
        return cast(dict[str, Any], ck)
    if "config" not in ck:
        raise ValueError(f"{path}: checkpoint has no config (written by an older version): export the run's "
                         "model.pt, or retrain")
    cfg = TrainConfig(**{k: v for k, v in ck["config"].items() if k in TrainConfig.__dataclass_fields__})
    split_csv = Path(ck.get("split_csv") or path.parent / "split.csv")
    if not split_csv.is_file():
        split_csv = path.parent / "split.csv"
    if not split_csv.is_file():
        raise FileNotFoundError(f"{path}: the run's split.csv is not found (looked beside the checkpoint)")
    root = Path(data_root or ck.get("films_root") or cfg.data_root or Path(cfg.manifest).resolve().parent)
    entries = read_manifest(split_csv)
    val_e = [e for e in entries if e.split == "val" and (not cfg.train_sources or e.source in cfg.train_sources)]
    if not val_e:
        raise ValueError(f"{split_csv}: no validation films to calibrate {path.name} on")
    _check_films(val_e, root)
    sel = np.array([not cfg.select_sources or e.source in cfg.select_sources for e in val_e])
    net = build_network(cfg.architecture, pretrained=False, image_size=cfg.image_size,
                        n_outputs=int(ck.get("n_outputs", 1)))
    net.load_state_dict(ck["model"])
    net.eval()
    cache = Path(cfg.cache_dir) if cfg.cache_dir else path.parent / "cache"
    x = load_inputs(val_e, root, cfg.spec(), cache, progress=False)
    with torch.no_grad():
        logits = np.concatenate([net(torch.from_numpy(np.asarray(x[i:i + 64], dtype=np.float32))).float().numpy()
                                 for i in range(0, len(x), 64)])
    cal = calibration(cfg, val_e, logits.astype(np.float64), sel, int(ck.get("epoch", 0)))
    log.info("calibrated checkpoint", extra={"checkpoint": str(path), "epoch": ck.get("epoch")})
    return _model_file_dict(cfg, net, cal, split_csv, root)


def _finish(cfg, out, split_csv, root, entries, val_e, y_val, sel, dl_val, device, state, started,
            use_trunk: bool = False, run: dict[str, Any] | None = None) -> dict[str, Any]:
    """Best weights -> validation logits -> temperature, thresholds, metrics -> model.pt; the
    summary (appending this run to a resumed run's ``runs``); the test report."""
    import torch

    from cxr_triage.training.network import build_network
    from cxr_triage.training.targets import n_outputs

    net = build_network(cfg.architecture, pretrained=False, image_size=cfg.image_size,
                        n_outputs=n_outputs(cfg.multitask)).to(device)
    ck = torch.load(out / "best.pt", map_location=device, weights_only=False)
    net.load_state_dict(ck["model"])
    idx, logits = _predict(_UpperModel.make(net, cfg.freeze_blocks) if use_trunk else net, dl_val, device)
    val_logits = np.zeros((len(val_e), logits.shape[1]))
    val_logits[idx] = logits
    cal = calibration(cfg, val_e, val_logits, sel, state["best_epoch"])
    if cfg.boxes_csv:
        from cxr_triage.training.heatmap import heatmap_validation

        cal["heatmap"] = heatmap_validation(cfg, entries, root, net, cal, device)
        cal["validation_metrics"]["heatmap"] = {k: v for k, v in cal["heatmap"].items() if k != "mask"}
    model_file = _model_file_dict(cfg, net, cal, split_csv, root)
    torch.save(model_file, out / "model.pt")
    minutes = round((time.time() - started) / 60, 2)
    summary_path = out / "train_summary.json"
    runs: list[dict[str, Any]] = []
    if run is not None and run.get("resumed") and summary_path.exists():
        try:
            runs = list(json.loads(summary_path.read_text()).get("runs", []))
        except (OSError, ValueError):
            runs = []
    if run is not None:
        runs.append({**run, "minutes": minutes})
    summary = {
        "config": asdict(cfg), "split": summarise(entries), "epochs_run": state["epoch"],
        "world_size": _dist_info()[1],
        "best_epoch": state["best_epoch"], "best_val_auroc": state["best_auroc"],
        "temperature": cal["temperature"], "logit_shift": cal["logit_shift"], "thresholds": cal["thresholds"],
        "validation_metrics": cal["validation_metrics"],
        "training_manifest_sha256": model_file["training_manifest_sha256"],
        "minutes": round(sum(r.get("minutes", 0.0) for r in runs) if runs else minutes, 2),
        "stopped_by": (run or {}).get("stopped_by", ""),
        "runs": runs,
    }
    if cfg.test_report:
        summary["test_report"] = _test_report(cfg, out, entries, root, net, cal, device)
    summary_path.write_text(json.dumps(summary, indent=2, default=float))
    return summary


def _test_report(cfg: TrainConfig, out: Path, entries: list[Entry], root: Path, net: Any,
                 cal: dict[str, Any], device: Any) -> str:
    """The test split scored by the calibrated best weights (PyTorch; ``export`` checks that
    ONNX Runtime agrees within 1e-4) -> ``test_report.json/.html``; the terminal summary is
    printed. Returns the JSON path ('' when the split has no test films)."""
    import torch

    from cxr_triage.training import report as test_report
    from cxr_triage.training.dataset import load_inputs

    test_e = [e for e in entries if e.split == "test"]
    if not test_e:
        _say("test report: the split has no test films")
        return ""
    cache = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    x = load_inputs(test_e, root, cfg.spec(), cache, progress=False)
    net.eval()
    with torch.no_grad():
        logits = np.concatenate([net(torch.from_numpy(np.asarray(x[i:i + 64], dtype=np.float32)).to(device))
                                 .float().cpu().numpy() for i in range(0, len(x), 64)])
    scores = calibrate.calibrated(logits[:, 0].astype(np.float64), cal["temperature"], cal["logit_shift"])
    rep = test_report.build_report(
        scores, test_e, cal["thresholds"], model=f"{out / 'model.pt'} (before export; PyTorch scores)",
        split="test", manifest=str(out / "split.csv"))
    paths = test_report.write_report(rep, out / "test_report.json")
    _say(test_report.terminal_summary(rep))
    _say(f"test report: {paths['json']} and {paths['html']}")
    return str(paths["json"])

