"""The data side of a training run: the split, the model inputs and targets, the loaders.

:func:`load_data` reads (or makes) the patient-level split and the cached preprocessed films
of the training and validation splits; :func:`build_loaders` turns them into MONAI data
loaders in one of three ways: cached trunk features (``trunk_views``), decoded films through
the image-pipeline augmentation (``pipeline_augment`` > 0), or the preprocessed arrays.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_triage.training.augment import PipelineAugment
from cxr_triage.training.dataset import (
    FilmDataset,
    FilmReadError,
    cache_key,
    eval_transforms,
    load_films,
    load_inputs,
    make_dataset,
    train_transforms,
)
from cxr_triage.training.distributed import Runtime
from cxr_triage.training.manifest import Entry, read_manifest, resolve, write_manifest
from cxr_triage.training.progress import say, split_table
from cxr_triage.training.split import assign_splits, check_no_leakage
from cxr_triage.training.synthetic import LesionDraws
from cxr_triage.training.targets import n_outputs, nodule_known, nodule_truth, targets
from cxr_triage.training.train_config import EFFNET_LITE, TrainConfig
from cxr_triage.training.trunk import ViewDataset, trunk_features, upper_model


@dataclass
class TrainData:
    """The run's films and what the network learns from them.

    ``x_*``: (N, 1, S, S) float16 preprocessed films; ``y_*``: (N,) abnormal labels;
    ``t_*``/``k_*``: (N, K) targets and their known-mask; ``sel``: (N_val,) bool, the
    validation films that select and calibrate; ``nod_val``/``nod_truth``: the selected
    validation films with a known nodule/mass status, and that status."""

    entries: list[Entry]
    split_csv: Path
    root: Path
    cache_dir: Path
    train_e: list[Entry]
    val_e: list[Entry]
    sel: np.ndarray
    x_train: np.ndarray
    x_val: np.ndarray
    y_train: np.ndarray
    y_val: np.ndarray
    t_train: np.ndarray
    k_train: np.ndarray
    t_val: np.ndarray
    k_val: np.ndarray
    n_out: int
    nod_val: np.ndarray
    nod_truth: np.ndarray


def prepare_split(cfg: TrainConfig, out: Path) -> tuple[list[Entry], Path, Path]:
    """(entries with their split, ``<out>/split.csv``, the folder its file paths are relative to).

    A new split's file paths are rewritten relative to the run folder, so ``split.csv`` is a
    manifest every command reads without ``--data-root`` (report, evaluate, commission, export).
    An existing ``split.csv`` (resume, or a new run in the same folder) is reused as it is."""
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


def check_films(entries: list[Entry], root: Path) -> None:
    """FileNotFoundError naming the first missing films (and how many) before any work starts."""
    missing = [e for e in entries if not resolve(e, root).is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{len(missing)} of {len(entries)} training/validation film(s) not found: "
                                f"{', '.join(e.file for e in missing[:5])}{more} (looked for "
                                f"{resolve(missing[0], root).resolve()}; wrong --data-root?)")


def trained_split(entries: list[Entry], split: str, cfg: TrainConfig) -> list[Entry]:
    """The films of ``split`` the run trains or validates on (``train_sources`` only, when given)."""
    return [e for e in entries if e.split == split and (not cfg.train_sources or e.source in cfg.train_sources)]


def selected(val_e: list[Entry], cfg: TrainConfig) -> np.ndarray:
    """(N_val,) bool: the validation films of ``select_sources`` (all when none are named)."""
    return np.array([not cfg.select_sources or e.source in cfg.select_sources for e in val_e])


def load_data(cfg: TrainConfig, rt: Runtime, resumed: bool) -> TrainData:
    """The split (written to ``<out>/split.csv`` by rank 0 when new), checked, printed, and the
    preprocessed training and validation films (rank 0 fills the cache, the others then read
    it). Raises ValueError when the split lacks training films, validation films or one of the
    classes in validation, and FileNotFoundError naming missing films."""
    out = Path(cfg.out)
    entries, split_csv, root = prepare_split(cfg, out)
    if rt.main and not split_csv.exists():
        write_manifest(entries, split_csv)
    train_e, val_e = trained_split(entries, "train", cfg), trained_split(entries, "val", cfg)
    if rt.main:
        say(f"split ({split_csv}{', reused' if resumed else ''}):\n{split_table(entries)}")
        if cfg.train_sources:
            say(f"training and validating on source(s) {', '.join(cfg.train_sources)} only")
        for warning in one_class_source_warnings(train_e):
            say(warning)
    _check_usable(train_e, val_e, cfg)
    check_films(train_e + val_e, root)
    sel = selected(val_e, cfg)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    x_train, x_val = _load_inputs(cfg, rt, train_e, val_e, root, cache_dir)
    t_train, k_train = targets(train_e, cfg.multitask, cfg.distill)
    t_val, k_val = targets(val_e, cfg.multitask, 0.0)
    if rt.main and cfg.multitask:
        say(f"targets: {int(k_train[:, 1].sum())} training films with a known nodule/mass status "
            f"({int((t_train[:, 1] * k_train[:, 1] >= 0.5).sum())} positive), teacher weight {cfg.distill:g}")
    return TrainData(entries=entries, split_csv=split_csv, root=root, cache_dir=cache_dir, train_e=train_e,
                     val_e=val_e, sel=sel, x_train=x_train, x_val=x_val,
                     y_train=np.array([e.label for e in train_e], dtype=np.float32),
                     y_val=np.array([e.label for e in val_e], dtype=np.float32),
                     t_train=t_train, k_train=k_train, t_val=t_val, k_val=k_val, n_out=n_outputs(cfg.multitask),
                     nod_val=nodule_known(val_e) & sel, nod_truth=nodule_truth(val_e))


def one_class_source_warnings(train_e: list[Entry]) -> list[str]:
    """One warning per training source that holds a single class beside other sources: a
    network can learn that source's pipeline as the label (the shortcut of the shared data's
    224 px rsna-normals, measured in model/MODEL_CARD.md, issue 22 round 5). [] for one source."""
    labels: dict[str, set[int]] = {}
    for e in train_e:
        labels.setdefault(e.source, set()).add(e.label)
    if len(labels) < 2:
        return []
    return [f"warning: training source {source} holds only {'abnormal' if 1 in seen else 'normal'} films: the "
            f"model can learn its pipeline as that label (model/MODEL_CARD.md, issue 22 round 5); leave it out "
            f"with --train-sources unless another source comes through the same pipeline"
            for source, seen in sorted(labels.items()) if len(seen) == 1]


def _check_usable(train_e: list[Entry], val_e: list[Entry], cfg: TrainConfig) -> None:
    if not train_e or not val_e:
        raise ValueError("the split has no training or no validation films"
                         + (f" from the source(s) {', '.join(cfg.train_sources)}" if cfg.train_sources else ""))
    if len({e.label for e in val_e}) < 2:
        raise ValueError("the validation split needs normal and abnormal films (for AUROC and thresholds): "
                         "add films or raise --val-fraction")


def _load_inputs(cfg: TrainConfig, rt: Runtime, train_e: list[Entry], val_e: list[Entry], root: Path,
                 cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) preprocessed films; rank 0 fills the cache first, the others then read it."""
    spec = cfg.spec()

    def both(main: bool) -> tuple[np.ndarray, np.ndarray]:
        arrays, bad = [], []
        for part in (train_e, val_e):
            try:
                arrays.append(load_inputs(part, root, spec, cache_dir, cfg.progress and main))
            except FilmReadError as exc:  # name the validation films' too, in one message
                bad += exc.bad
        if bad:
            raise FilmReadError(bad)
        return arrays[0], arrays[1]

    return rt.rank0_first(both)


@dataclass
class Loaders:
    """The training and validation loaders and what reseeds them each epoch.

    ``core``: the module the loaders' ``image`` feeds (the network, or its part above the
    cached trunk when ``use_trunk``); ``steps_per_epoch``: batches trained per epoch."""

    train: Any
    val: Any
    dataset: Any
    sampler: Any
    generator: Any
    transform: Any
    use_trunk: bool
    use_films: bool
    core: Any
    steps_per_epoch: int

    def set_epoch(self, epoch: int, seed: int, rank: int) -> None:
        """Reseed the shuffling, the sampler and the augmentation for ``epoch`` (a resumed run
        draws what an uninterrupted one would have drawn)."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self.generator.manual_seed(seed * 1000 + epoch)
        if self.use_trunk:
            self.dataset.set_epoch(seed * 1000 + epoch)
        elif self.use_films:
            self.dataset.set_epoch(epoch)
        else:
            self.transform.set_random_state(seed=seed * 1000 + epoch * 10 + rank)


def build_loaders(cfg: TrainConfig, rt: Runtime, data: TrainData, net: Any) -> Loaders:
    """Datasets (cached trunk features, augmented films or preprocessed arrays) and their MONAI
    loaders; a DistributedSampler shards them under torchrun."""
    import torch  # torch and MONAI only once training runs
    from monai.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    tf_train = train_transforms(cfg.augment, spatial_only=cfg.pipeline_augment > 0)
    use_films = cfg.pipeline_augment > 0
    use_trunk = (cfg.trunk_views > 0 and cfg.architecture in EFFNET_LITE and cfg.freeze_blocks > 0
                 and not use_films)
    if use_trunk:
        ds_train, ds_val = _trunk_datasets(cfg, rt, data, net, tf_train)
        core = upper_model(net, cfg.freeze_blocks)
    elif use_films:
        # rank 0 decodes and caches the films first: ranks writing one cache file at once collide
        films = rt.rank0_first(lambda main: load_films(data.train_e, data.root, max(512, 2 * cfg.image_size),
                                                       data.cache_dir, cfg.progress and main))
        lesions = LesionDraws.of(data.train_e, cfg.synthetic_lesions) if cfg.synthetic_lesions > 0 else None
        ds_train = FilmDataset(films, data.t_train, data.k_train, cfg.spec(),
                               PipelineAugment(cfg.pipeline_augment, film_look=cfg.film_look),
                               tf_train, seed=cfg.seed * 100 + rt.rank, lesions=lesions)
        ds_val = make_dataset(data.x_val, data.t_val, eval_transforms(), data.k_val)
        core = net
    else:
        ds_train = make_dataset(data.x_train, data.t_train, tf_train, data.k_train)
        ds_val = make_dataset(data.x_val, data.t_val, eval_transforms(), data.k_val)
        core = net
    train_sampler: DistributedSampler[Any] | None = (
        DistributedSampler(ds_train, rt.world, rt.rank, shuffle=True, seed=cfg.seed) if rt.distributed else None)
    val_sampler: DistributedSampler[Any] | None = (
        DistributedSampler(ds_val, rt.world, rt.rank, shuffle=False) if rt.distributed else None)
    gen = torch.Generator().manual_seed(cfg.seed)
    dl_train = DataLoader(ds_train, batch_size=cfg.batch_size, shuffle=train_sampler is None,
                          sampler=train_sampler, num_workers=0, generator=gen, drop_last=len(ds_train) > cfg.batch_size)
    dl_val = DataLoader(ds_val, batch_size=64, shuffle=False, sampler=val_sampler, num_workers=0)
    steps = len(dl_train) if not cfg.max_steps_per_epoch else min(len(dl_train), cfg.max_steps_per_epoch)
    return Loaders(train=dl_train, val=dl_val, dataset=ds_train, sampler=train_sampler, generator=gen,
                   transform=tf_train, use_trunk=use_trunk, use_films=use_films, core=core, steps_per_epoch=steps)


def _trunk_datasets(cfg: TrainConfig, rt: Runtime, data: TrainData, net: Any, tf_train: Any) -> tuple[Any, Any]:
    """Cached trunk features of the training (``trunk_views`` augmented views) and validation
    films (one view) as :class:`ViewDataset`; rank 0 computes and caches them first."""
    k, views, spec = cfg.freeze_blocks, cfg.trunk_views, cfg.spec()
    tag = f"k{k}_v{views}_s{cfg.seed}_a{cfg.augment:g}_p{int(cfg.pretrained)}"
    val_tag = f"k{k}_p{int(cfg.pretrained)}"
    paths = {n: data.cache_dir / f"trunk_{cache_key(e, data.root, spec)}_{tag if n == 'train' else val_tag}.npy"
             for n, e in (("train", data.train_e), ("val", data.val_e))}
    feats = {}
    for phase in ((0,) if not rt.distributed else (0, 1)):
        if rt.main == (phase == 0):
            feats["train"] = trunk_features(net, data.x_train, k, views, tf_train, cfg.seed, paths["train"],
                                            cfg.progress and rt.main)
            feats["val"] = trunk_features(net, data.x_val, k, 1, None, cfg.seed, paths["val"])
        if phase == 0:
            rt.barrier()
    return ViewDataset(feats["train"], data.t_train, data.k_train), ViewDataset(feats["val"], data.t_val, data.k_val)
