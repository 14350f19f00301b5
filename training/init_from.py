"""A model file of this project back into the torch network it was exported from, checked.

Only the ONNX file of a shipped model may exist (no checkpoint). The export
(:func:`cxr_triage.training.export.export_onnx`, an :class:`~cxr_triage.training.network.ExportWrapper`
traced in eval mode) folds every BatchNorm into the convolution before it, so the file holds,
per convolution, a folded weight and bias (initializers ``onnx::Conv_NNNN``, in graph order; float16
ones behind a Cast are read too), the
output layers by name (``net.fc.*`` or ``net.members.K.fc.*``) and the calibration constants
(``temperature``, ``logit_shift``, ``nodule_*``, ``heatmap_mask``).

:func:`network_from_onnx` rebuilds the network from the metadata (architecture, input size,
outputs), walks the torch convolutions in execution order (forward hooks) beside the ONNX Conv
nodes in graph order, and sets each convolution to the folded weight and its BatchNorm to an
identity carrying the folded bias (weight 1, bias b, running mean 0, running variance 1 - eps).
:func:`check_against_onnx` then runs the rebuilt wrapper and ONNX Runtime on the same inputs:
every output must agree within ``tolerance`` or :class:`InitModelError` is raised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxr_triage.contract.model_file import INPUT_NAME, METADATA_KEY
from cxr_triage.training.train_config import EFFNET_LITE

#: buffers of ExportWrapper stored as initializers (the calibration baked into the file)
CALIBRATION = ("temperature", "logit_shift", "nodule_temperature", "nodule_shift")
#: architectures whose export folds a BatchNorm after each convolution (DenseNet's comes before)
FOLDABLE = (*EFFNET_LITE, "tiny")


class InitModelError(ValueError):
    """The file cannot be turned back into the network it was exported from (not a model of
    this project, an unsupported layout, or outputs that disagree with ONNX Runtime)."""


@dataclass
class InitModel:
    """A model to start a run from: ``net`` (TriageNet or EnsembleNet, eval mode, weights set),
    ``members`` (1: a single network), the member ``architecture``, input ``image_size``,
    ``harmonise_size``, ``n_outputs``, the calibration (``CALIBRATION`` values and the heatmap
    mask (h, w) or None) and ``path``."""

    net: Any
    path: Path
    architecture: str
    members: int
    image_size: int
    harmonise_size: int
    n_outputs: int
    calibration: dict[str, float] = field(default_factory=dict)
    heatmap_mask: Any = None

    def wrapper(self) -> Any:
        """The :class:`ExportWrapper` of ``net`` with the file's calibration (eval mode)."""
        # network imports torch at module level: only once a model is loaded
        from cxr_triage.training.network import ExportWrapper

        c = self.calibration
        return ExportWrapper(self.net, c.get("temperature", 1.0), c.get("logit_shift", 0.0),
                             c.get("nodule_temperature", 1.0), c.get("nodule_shift", 0.0), self.heatmap_mask).eval()


def onnx_metadata(model: Any, path: Path) -> dict[str, Any]:
    """The ``cxr_triage`` metadata JSON of a loaded ONNX ModelProto; InitModelError when absent."""
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise InitModelError(f"{path}: no {METADATA_KEY!r} metadata: not a model file exported by cxr-triage")
    return dict(json.loads(props[METADATA_KEY]))


def network_from_onnx(path: str | Path) -> InitModel:
    """The torch network of a cxr-triage ONNX file, weights set from its initializers (not yet
    checked against ONNX Runtime: :func:`check_against_onnx`).

    Raises InitModelError: not an ONNX file of this project, an architecture whose BatchNorm is
    not folded after a convolution (DenseNet), or convolutions / output layers that do not match."""
    import onnx  # onnx and torch only once a model is loaded
    from onnx import numpy_helper

    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is "not an ONNX file"
        raise InitModelError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    meta = onnx_metadata(model, path)
    inits = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in model.graph.initializer}
    for n in model.graph.node:  # float16 storage (export_fp16.halve_weights): weight__fp16 -> Cast -> weight
        if n.op_type == "Cast" and n.input[0] in inits:
            inits[n.output[0]] = inits[n.input[0]]
    arch, members = _layout(meta, inits, path)
    fc_weight = inits["net.members.0.fc.weight" if members > 1 else "net.fc.weight"]
    pre = meta.get("preprocessing", {})
    init = InitModel(net=None, path=path, architecture=arch, members=members, image_size=int(pre.get("size", 224)),
                     harmonise_size=int(pre.get("harmonise_size", pre.get("size", 224))),
                     n_outputs=int(fc_weight.shape[0]),
                     calibration={k: float(inits[k]) for k in CALIBRATION if k in inits},
                     heatmap_mask=inits.get("heatmap_mask"))
    init.net = empty_network(arch, members, init.image_size, init.n_outputs)
    convs = [(inits.get(n.input[1]), inits.get(n.input[2]) if len(n.input) > 2 else None)
             for n in model.graph.node if n.op_type == "Conv"]
    set_folded_convs(init.net, convs, init.image_size, path)
    set_output_layers(init.net, inits, path)
    return init


def _layout(meta: dict[str, Any], inits: dict[str, np.ndarray], path: Path) -> tuple[str, int]:
    """(member architecture, number of members) from the metadata and the fc initializers."""
    members = sum(1 for k in inits if k.startswith("net.members.") and k.endswith(".fc.weight"))
    arch = str(meta.get("architecture", ""))
    if arch == "ensemble":
        arch = str(meta.get("extra", {}).get("training_config", {}).get("architecture", "effnet_lite0"))
    if arch not in FOLDABLE:
        raise InitModelError(f"{path}: architecture {arch!r} cannot be loaded back from ONNX (only {FOLDABLE}); "
                             "start from the run's model.pt instead")
    if not members and "net.fc.weight" not in inits:
        raise InitModelError(f"{path}: no output layer (net.fc.weight or net.members.K.fc.weight) in the file")
    return arch, max(1, members)


def empty_network(architecture: str, members: int, image_size: int, n_outputs: int) -> Any:
    """A TriageNet (``members`` 1) or an EnsembleNet of ``members`` TriageNets, random weights."""
    # network imports torch at module level: only once a model is loaded
    from cxr_triage.training.network import EnsembleNet, build_network

    nets = [build_network(architecture, pretrained=False, image_size=image_size, n_outputs=n_outputs)
            for _ in range(members)]
    return (nets[0] if members == 1 else EnsembleNet(nets)).eval()


def conv_order(net: Any, image_size: int) -> list[tuple[Any, Any]]:
    """(Conv2d, the BatchNorm2d that takes its output or None) in execution order of
    ``net.logit_and_cam`` (the traced export's order) on a (1, 1, S, S) input."""
    import torch  # torch only once a model is loaded

    seen: list[tuple[Any, Any, Any]] = []  # (module, input tensor, output tensor)

    def hook(module: Any, inputs: Any, output: Any) -> None:
        seen.append((module, inputs[0], output))

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d))]
    try:
        with torch.no_grad():
            net.eval().logit_and_cam(torch.zeros(1, 1, image_size, image_size))
    finally:
        for h in handles:
            h.remove()
    pairs = []
    for i, (m, _, out) in enumerate(seen):
        if isinstance(m, torch.nn.Conv2d):
            nxt = seen[i + 1] if i + 1 < len(seen) else None
            bn = nxt[0] if nxt is not None and isinstance(nxt[0], torch.nn.BatchNorm2d) and nxt[1] is out else None
            pairs.append((m, bn))
    return pairs


def set_folded_convs(net: Any, convs: list[tuple[Any, Any]], image_size: int, path: Path) -> None:
    """Each torch convolution <- the ONNX Conv's folded (weight, bias) at the same position; its
    BatchNorm becomes an identity plus the bias. Raises InitModelError on a count or shape mismatch."""
    import torch  # torch only once a model is loaded

    pairs = conv_order(net, image_size)
    if len(pairs) != len(convs):
        raise InitModelError(f"{path}: {len(convs)} convolutions in the file, {len(pairs)} in the network it "
                             "names: not the same architecture")
    with torch.no_grad():
        for i, ((conv, bn), (w, b)) in enumerate(zip(pairs, convs)):
            if w is None or tuple(w.shape) != tuple(conv.weight.shape):
                got = None if w is None else tuple(w.shape)
                raise InitModelError(f"{path}: convolution {i}: weight {got} in the file, "
                                     f"{tuple(conv.weight.shape)} in the network")
            conv.weight.copy_(torch.from_numpy(w))
            bias = torch.zeros(w.shape[0]) if b is None else torch.from_numpy(b)
            if bn is None:
                if conv.bias is None:
                    if bool(bias.abs().max() > 0):
                        raise InitModelError(f"{path}: convolution {i} has a bias the network cannot hold")
                    continue
                conv.bias.copy_(bias)
                continue
            if conv.bias is not None:
                conv.bias.zero_()
            bn.weight.fill_(1.0)
            bn.bias.copy_(bias)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)


def set_output_layers(net: Any, inits: dict[str, np.ndarray], path: Path) -> None:
    """Every ``*fc.weight`` / ``*fc.bias`` parameter <- the initializer ``net.<its name>``."""
    import torch  # torch only once a model is loaded

    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.split(".")[-2:-1] != ["fc"]:
                continue
            value = inits.get(f"net.{name}")
            if value is None or tuple(value.shape) != tuple(p.shape):
                raise InitModelError(f"{path}: output layer net.{name} missing or of another shape in the file")
            p.copy_(torch.from_numpy(value))


def check_against_onnx(init: InitModel, inputs: np.ndarray, tolerance: float = 1e-4) -> float:
    """Largest |ONNX Runtime - torch| over the file's outputs (score, nodule_score, heatmap) on
    ``inputs`` (N, 1, S, S) (preprocess() output). Raises InitModelError above ``tolerance``."""
    import torch  # torch only once a model is loaded

    # the one place ONNX Runtime sessions are made (inference.scorer): only when a model is checked
    from cxr_triage.inference.scorer import onnx_session

    sess = onnx_session(init.path)
    names = [o.name for o in sess.get_outputs()]
    x = np.asarray(inputs, dtype=np.float32)
    got = dict(zip(names, sess.run(names, {INPUT_NAME: x})))
    wrapper = init.wrapper()
    wrapper.with_nodule = "nodule_score" in names
    with torch.no_grad():
        ref = [t.numpy() for t in wrapper(torch.from_numpy(x))]
    if len(ref) != len(names):
        raise InitModelError(f"{init.path}: outputs {names} in the file, {len(ref)} from the rebuilt network")
    worst = max(float(np.max(np.abs(got[n] - r))) for n, r in zip(names, ref))
    if not worst <= tolerance:
        raise InitModelError(f"{init.path}: the rebuilt torch network disagrees with ONNX Runtime (max abs "
                             f"difference {worst:.3g} > {tolerance:g} on {len(x)} film(s)): not loaded")
    return worst
