"""The recipe of a training run (:class:`TrainConfig`) and what a resumed run may change.

Saved in every checkpoint and in ``train_summary.json``; read back by ``--resume``
(:func:`resumed_config`) and by :func:`cxr_triage.training.checkpoints.calibrate_checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cxr_triage.contract.preprocessing import PreprocessSpec

#: MBConv blocks before the fourth stage's first (stride-2) block plus that block: what
#: ``make train``'s recipe and ``cxr-triage train`` freeze by default (6 of Lite0's 16 blocks;
#: Lite1/2 repeat stages 2-3 three times: 8 of their 21)
EFFNET_FROZEN_BLOCKS = {"effnet_lite0": 6, "effnet_lite1": 8, "effnet_lite2": 8}
EFFNET_LITE = tuple(EFFNET_FROZEN_BLOCKS)
#: the networks of training/network.py
ARCHITECTURES = (*EFFNET_LITE, "densenet121", "tiny")


def frozen_blocks(architecture: str) -> int:
    """MBConv blocks frozen by default (``make train`` and ``cxr-triage train`` alike, when no
    ``--freeze-blocks`` is given): :data:`EFFNET_FROZEN_BLOCKS` of an EfficientNet-Lite, 0 for
    any other network (it has none to freeze)."""
    return EFFNET_FROZEN_BLOCKS.get(architecture, 0)


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
    film_look: float = 0.0              # share of those draws given a digitised screen-film look first
                                        # (training/film_look.py; needs pipeline_augment > 0)
    synthetic_lesions: float = 0.0      # share of a normal training film's draws given a synthetic
                                        # nodule/mass (training/lesions.py; needs pipeline_augment > 0)
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
    init_from: str = ""                 # fine-tune: the model file the weights start from (ONNX of this
                                        # project or a model.pt; training/finetune.py); "": ImageNet/random
    members: int = 1                    # >1: an ensemble of that many networks (a fine-tuned ensemble)
    head_epochs: int = 0                # the first n epochs train the output layers only (trunk frozen)
    mix_bundled: int = 0                # >0: that many training films of the bundled model's split mixed
                                        # into the training split (training/finetune.py, mix_bundled)

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
        elif k == "out" or (k in ("manifest", "data_root") and not getattr(given, k)):
            continue  # the run continues in the folder given (a copied or moved run folder)
        elif k in values and getattr(given, k) != values[k] and getattr(given, k) != getattr(_DEFAULTS, k):
            ignored.append(f"{k}={getattr(given, k)!r} (the run keeps {values[k]!r})")
    values["out"] = given.out or values.get("out", "")
    return TrainConfig(**values), ignored


_DEFAULTS = TrainConfig(manifest="", out="")
