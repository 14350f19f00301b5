"""A site retrain that starts from a model that works (``cxr-triage train --init-from``).

The init model is a cxr-triage ONNX file (``bundled``: the shipped one), rebuilt into its
torch network and checked against ONNX Runtime on the run's own films
(:mod:`cxr_triage.training.init_from`), or a ``model.pt`` of an earlier run. Its input size,
preprocessing, outputs and members (an ensemble is fine-tuned as one network, mean logits)
become the run's; every BatchNorm keeps its statistics (eval mode: a few hundred films cannot
re-estimate them); ``head_epochs`` train the output layers alone first. The run is then
calibrated, reported and exported as any other, and :func:`compare_with_init` pairs the fine-tuned
model with the init model on the run's test films (paired DeLong / patient bootstrap,
:func:`cxr_triage.evaluation.metrics.compare_models`) and says plainly whether it is better.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np

from cxr_triage.contract.model_file import INPUT_NAME, SCORE_OUTPUT
from cxr_triage.paths import bundled_model_path, repo_root, shared_data_dir
from cxr_triage.training.init_from import (
    InitModel,
    InitModelError,
    check_against_onnx,
    empty_network,
    network_from_onnx,
)
from cxr_triage.training.manifest import read_manifest, resolve, write_manifest
from cxr_triage.training.progress import say
from cxr_triage.training.targets import n_outputs
from cxr_triage.training.train_config import TrainConfig

#: sources of the bundled split with both classes (mixed in by --mix-bundled; rsna-normals is another pipeline)
MIX_SOURCES = ("nih-cxr14", "nih-extra", "rsna-pneumonia")
#: films of the run's training split the rebuilt network is checked on against ONNX Runtime
CHECK_FILMS = 4


def resolve_init(text: str) -> Path:
    """``bundled`` -> the shipped ONNX file; anything else a path. FileNotFoundError when missing."""

    path = bundled_model_path() if text == "bundled" else Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"--init-from: {path} not found (an ONNX file of cxr-triage, a model.pt, or "
                                "'bundled')")
    return path.resolve()


def load_init(text: str) -> InitModel:
    """The init model named by ``--init-from``: an ONNX file (rebuilt, checked later on films:
    :func:`init_network`) or a training checkpoint (``model.pt``). Raises InitModelError."""
    import torch  # torch only once training runs

    # network imports torch at module level: only once an init model is loaded
    from cxr_triage.training.network import network_from_checkpoint

    path = resolve_init(text)
    if path.suffix.lower() == ".onnx":
        return network_from_onnx(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        net = network_from_checkpoint(ck).eval()
    except Exception as exc:  # noqa: BLE001 - any failure to read it is "not a model"
        raise InitModelError(f"{path}: neither a cxr-triage ONNX file nor a training checkpoint "
                             f"({type(exc).__name__}: {exc})") from None
    members = ck.get("members") or [ck]
    pre = ck["preprocessing"]
    return InitModel(net=net, path=path, architecture=members[0]["architecture"],
                     members=len(ck.get("members") or [0]), image_size=int(ck["image_size"]),
                     harmonise_size=int(pre.get("harmonise_size", ck["image_size"])),
                     n_outputs=int(ck.get("n_outputs", 1)))


def apply_init(cfg: TrainConfig, init: InitModel) -> TrainConfig:
    """``cfg`` with the init model's architecture, members, input size, preprocessing and
    outputs (multitask when it has more than one). Raises InitModelError for an output count
    this version cannot train and ValueError for --trunk-views with an ensemble."""
    if init.n_outputs not in (1, n_outputs(True)):
        raise InitModelError(f"{init.path}: {init.n_outputs} outputs; this version trains 1 or {n_outputs(True)}")
    if init.members > 1 and cfg.trunk_views:
        raise ValueError("--trunk-views cannot cache an ensemble's trunk: leave it at 0 with --init-from")
    new = dataclasses.replace(cfg, init_from=str(init.path), architecture=init.architecture, members=init.members,
                              image_size=init.image_size, harmonise_size=init.harmonise_size,
                              multitask=init.n_outputs > 1, pretrained=False)
    members = f"an ensemble of {init.members} " if init.members > 1 else ""
    say(f"init: fine-tuning {init.path.name} ({members}{init.architecture}, {init.image_size} px, "
        f"{init.n_outputs} output(s)); lr {new.lr:g}, {new.head_epochs} head-only epoch(s), BatchNorm statistics kept")
    return new


def network_for(cfg: TrainConfig, n_out: int) -> Any:
    """A run's network structure, random weights: a TriageNet, or (``cfg.members`` > 1, a
    fine-tuned ensemble) an EnsembleNet of ``members`` TriageNets."""
    return empty_network(cfg.architecture, max(1, cfg.members), cfg.image_size, n_out)


def init_network(cfg: TrainConfig, init: InitModel | None, n_out: int, check_inputs: np.ndarray) -> Any:
    """The network a fine-tune trains: the init model's (an ONNX one checked against ONNX
    Runtime on ``check_inputs`` (N, 1, S, S) first), or the bare structure when resuming
    (``init`` None); BatchNorm frozen, stem + first ``freeze_blocks`` blocks frozen per member."""
    if init is not None and init.path.suffix.lower() == ".onnx":
        worst = check_against_onnx(init, check_inputs[:CHECK_FILMS])
        say(f"init: the rebuilt network agrees with ONNX Runtime on {min(len(check_inputs), CHECK_FILMS)} of "
            f"the run's films (max abs difference {worst:.2g})")
    net = init.net if init is not None else network_for(cfg, n_out)
    freeze_batchnorm(net)
    for member in getattr(net, "nets", [net]):
        if cfg.freeze_blocks:
            member.features.freeze_blocks(cfg.freeze_blocks)
    return net


def freeze_batchnorm(net: Any) -> None:
    """Every BatchNorm of ``net`` stays in eval mode (its running statistics, here the folded
    identity, are used and never updated), whatever ``net.train()`` is called with."""
    import torch  # torch only once training runs

    frozen = _frozen_batchnorm_class()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.__class__ = frozen
            m.eval()


@functools.cache
def _frozen_batchnorm_class() -> Any:
    """A BatchNorm2d whose ``train()`` always sets eval mode (same parameters and buffers)."""
    import torch  # torch only once training runs

    class FrozenBatchNorm2d(torch.nn.BatchNorm2d):
        def train(self, mode: bool = True) -> "FrozenBatchNorm2d":
            return super().train(False)

    return FrozenBatchNorm2d


def check_inputs(cfg: TrainConfig, entries: list[Any], root: Path) -> np.ndarray:
    """(n, 1, S, S) preprocessed inputs of the first :data:`CHECK_FILMS` training films."""
    # export imports ONNX Runtime: only when an ONNX init model is checked
    from cxr_triage.training.export import check_films

    pick = [e for e in entries if e.split == "train"][:CHECK_FILMS] or entries[:CHECK_FILMS]
    return check_films([resolve(e, root) for e in pick], cfg.spec())


def compare_with_init(cfg: TrainConfig, entries: list[Any], root: Path) -> dict[str, Any]:
    """The fine-tuned ``<out>/model.pt`` against the init model on the run's test films (the
    same films, paired): AUROC of each, their difference (this run minus the init model) with a
    patient-level paired bootstrap 95% CI and the DeLong p value, and a plain verdict, printed
    with the command that compares them on the site's separate films. {} without a test split
    holding both classes."""
    # metrics imports SciPy; dataset and checkpoints torch: only once a run has finished
    from cxr_triage.evaluation.metrics import compare_models
    from cxr_triage.training.dataset import load_inputs
    from cxr_triage.training.report_figures import paired_verdict

    out = Path(cfg.out)
    test_e = [e for e in entries if e.split == "test"]
    y = np.array([e.label for e in test_e], dtype=int)
    if y.size == 0 or y.min() == y.max():
        say("init comparison: the run's test split lacks normal or abnormal films; compare on separate films")
        return {}
    x = load_inputs(test_e, root, cfg.spec(), Path(cfg.cache_dir) if cfg.cache_dir else out / "cache", progress=False)
    a, b = abnormal_scores(out / "model.pt", x), abnormal_scores(Path(cfg.init_from), x)
    res = compare_models(y, a, b, [e.patient_id or e.file for e in test_e], targets=(), n_boot=1000)
    d, boot = res["auroc_delong"], res["auroc_bootstrap"]
    verdict = paired_verdict(boot["difference"], boot["low"], "the init model")
    summary = {"films": int(y.size), "abnormal": int(y.sum()), "auroc_site": round(d["auroc_a"], 4),
               "auroc_init": round(d["auroc_b"], 4), "difference": round(boot["difference"], 4),
               "paired_bootstrap_ci95": [round(boot["low"], 4), round(boot["high"], 4)],
               "delong_p_value": round(d["p_value"], 4), "init_model": cfg.init_from, "verdict": verdict}
    say(f"init comparison on this run's {y.size} test films ({int(y.sum())} abnormal), paired: AUROC "
        f"{d['auroc_a']:.3f} (this run) vs {d['auroc_b']:.3f} ({Path(cfg.init_from).name}), difference "
        f"{boot['difference']:+.3f} (95% CI {boot['low']:+.3f} to {boot['high']:+.3f}, DeLong p "
        f"{d['p_value']:.3f}): {verdict}")
    say(f"too few films to decide? export it (cxr-triage export --checkpoint {out / 'model.pt'} --out site.onnx), "
        f"then pair it with the init model on the site's separate films: cxr-triage report --model site.onnx "
        f"--manifest SEPARATE.csv --split all --compare {cfg.init_from}")
    return summary


def abnormal_scores(model: Path, x: np.ndarray) -> np.ndarray:
    """(N,) abnormal scores (ONNX file: calibrated ``score``; checkpoint: the abnormal logit,
    the same ranking) of a model on inputs ``x`` (N, 1, S, S)."""
    import torch  # torch only once a run has finished

    # scorer makes ONNX Runtime sessions; checkpoints and network import torch: only once a run has finished
    from cxr_triage.inference.scorer import onnx_session
    from cxr_triage.training.checkpoints import batch_logits
    from cxr_triage.training.network import network_from_checkpoint

    if model.suffix.lower() == ".onnx":
        sess = onnx_session(model)
        return np.concatenate([sess.run([SCORE_OUTPUT], {INPUT_NAME: np.asarray(x[i:i + 32], dtype=np.float32)})[0]
                               for i in range(0, len(x), 32)]).astype(np.float64)
    net = network_from_checkpoint(torch.load(model, map_location="cpu", weights_only=False))
    return batch_logits(net, x)[:, 0].astype(np.float64)


def mix_bundled(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` training on ``<out>/mixed_manifest.csv``: the site's manifest rows plus up to
    ``cfg.mix_bundled`` training films of the project's split (``model/default_split.csv``,
    sources with both classes, drawn with ``cfg.seed``) from the shared data, each fixed to the
    training split, so validation, calibration and the test comparison stay on the site's films.
    Paths are rewritten relative to the new manifest. FileNotFoundError without the shared data."""
    import os


    shared = shared_data_dir(required=True)
    out = Path(cfg.out).resolve()
    site_root = Path(cfg.data_root or Path(cfg.manifest).resolve().parent).resolve()
    bundled = [e for e in read_manifest(repo_root() / "model" / "default_split.csv")
               if e.split == "train" and e.source in MIX_SOURCES]
    rng = np.random.default_rng(cfg.seed)
    pick = [bundled[i] for i in sorted(rng.choice(len(bundled), min(cfg.mix_bundled, len(bundled)), replace=False))]
    site = read_manifest(cfg.manifest)
    for e, root in [*((e, site_root) for e in site), *((e, shared) for e in pick)]:
        e.file = os.path.relpath((root / e.file).resolve(), out)
        e.extra.pop("twin", None)
    path = write_manifest([*site, *pick], out / "mixed_manifest.csv")
    say(f"mixed in {len(pick)} training films of the project's split from {shared} (training split only; "
        f"validation and test stay the site's): {path}")
    return dataclasses.replace(cfg, manifest=str(path), data_root=str(out))
