"""Checkpoint (``model.pt`` from training) -> ONNX file the worker runs unchanged.

The ONNX graph takes ``image`` (N, 1, S, S) = preprocess() output and gives ``score``
(calibrated P(abnormal), temperature baked in), ``nodule_score`` (calibrated P(nodule or
mass), when the checkpoint has a calibrated nodule/mass output) and ``heatmap`` (N, h, w) in
[0, 1] on a fixed scale, masked to the lung-field prior when one was fitted. The
:class:`ModelMetadata` JSON (preprocessing, thresholds, temperature, manifest SHA-256,
validation metrics, date) goes into ``metadata_props``. The export is then checked: ONNX
Runtime and PyTorch must agree within ``tolerance`` on real films, or the file is removed and
:class:`ExportCheckError` raised, so a bad export can never be shipped by accident.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxr_triage.contract.files import file_sha256, json_safe
from cxr_triage.contract.model_file import (
    HEATMAP_OUTPUT,
    INPUT_NAME,
    METADATA_KEY,
    NODULE_OUTPUT,
    SCORE_OUTPUT,
    ModelMetadata,
)
from cxr_triage.contract.operating_points import operating_point_name
from cxr_triage.contract.preprocessing import PreprocessSpec, preprocess
from cxr_triage.inference.scorer import ModelError, onnx_session
from cxr_triage.training.dataset import read_pixels
from cxr_triage.training.manifest import read_manifest, resolve

log = logging.getLogger(__name__)
MAX_BYTES = 40 * 1024 * 1024  # a two-member ensemble of EfficientNet-Lite0 is ~26 MiB


class ExportCheckError(RuntimeError):
    """ONNX Runtime and PyTorch disagree (or the file is unusable): nothing was exported."""


def load_checkpoint(path: str | Path, ck: dict[str, Any] | None = None):
    """(ExportWrapper in eval mode, checkpoint dict) from a training ``model.pt`` (or from ``ck``,
    the same dict already loaded, e.g. a calibrated ``best.pt``:
    :func:`cxr_triage.training.checkpoints.calibrate_checkpoint`)."""
    import torch  # torch only once a checkpoint is exported

    # network imports torch at module level: only once a checkpoint is exported
    from cxr_triage.training.network import ExportWrapper, network_from_checkpoint

    if ck is None:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    if "architecture" not in ck or "preprocessing" not in ck:
        raise ValueError(f"{path}: not a training checkpoint with its config (export model.pt, best.pt or last.pt "
                         "of a `cxr-triage train` run)")
    net = network_from_checkpoint(ck)
    if not ck.get("nodule_thresholds"):
        net.n_outputs = 1  # no usable nodule/mass output (uncalibrated): the file gets score + heatmap only
    heatmap = ck.get("heatmap") or {}
    mask = torch.as_tensor(heatmap["mask"], dtype=torch.float32) if heatmap.get("mask") is not None else None
    wrapper = ExportWrapper(net, ck.get("temperature", 1.0), ck.get("logit_shift", 0.0),
                            ck.get("nodule_temperature", 1.0), ck.get("nodule_shift", 0.0), mask).eval()
    return wrapper, ck


def output_names(wrapper) -> list[str]:
    """The ONNX outputs of an :class:`ExportWrapper`, in its order."""
    return [SCORE_OUTPUT, *([NODULE_OUTPUT] if wrapper.with_nodule else []), HEATMAP_OUTPUT]


def build_metadata(ck: dict[str, Any], name: str | None = None, version: str | None = None) -> ModelMetadata:
    now = _dt.datetime.now(_dt.timezone.utc)
    sha = ck.get("training_manifest_sha256", "")
    return ModelMetadata(
        name=name or f"cxr-triage-{ck['architecture'].replace('_', '-')}",
        version=version or f"{now:%Y.%m.%d}-{sha[:8] or 'nomanifest'}",
        preprocessing=PreprocessSpec.from_dict(ck["preprocessing"]),
        thresholds={k: float(v) for k, v in ck.get("thresholds", {}).items()},
        default_operating_point=operating_point_name(0.98),
        nodule_thresholds={k: float(v) for k, v in (ck.get("nodule_thresholds") or {}).items()},
        nodule_default_operating_point=ck.get("nodule_default_operating_point") or operating_point_name(0.9),
        nodule_flag_shown=bool(ck.get("nodule_flag_shown", True)),
        heatmap_validated=bool((ck.get("heatmap") or {}).get("validated", False)),
        temperature=float(ck.get("temperature", 1.0)),
        architecture=ck["architecture"],
        training_manifest_sha256=sha,
        validation_metrics=json_safe(ck.get("validation_metrics", {})),
        created=now.isoformat(timespec="seconds"),
        extra={"training_config": json_safe(ck.get("config", {})),
               "logit_shift": float(ck.get("logit_shift", 0.0)),
               "calibration": "score = sigmoid((logit + logit_shift) / temperature)",
               "tasks": list(ck.get("tasks", ["abnormal"])),
               **({"nodule_temperature": float(ck["nodule_temperature"]), "nodule_shift": float(ck["nodule_shift"]),
                   "nodule_calibration": "nodule_score = sigmoid((logit_1 + nodule_shift) / nodule_temperature)"}
                  if ck.get("nodule_thresholds") else {}),
               "heatmap": json_safe({k: v for k, v in (ck.get("heatmap") or {}).items() if k != "mask"})},
    )


def export_onnx(wrapper, meta: ModelMetadata, out: str | Path, opset: int = 17) -> Path:
    """Write the ONNX graph with dynamic batch and the metadata JSON."""
    import onnx  # onnx and torch only once a checkpoint is exported
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    size = meta.preprocessing.size
    dummy = torch.zeros(2, 1, size, size)
    tmp = out.with_suffix(".tmp.onnx")
    names = output_names(wrapper)
    torch.onnx.export(
        wrapper, (dummy,), str(tmp), dynamo=False, input_names=[INPUT_NAME],
        output_names=names, opset_version=opset,
        dynamic_axes={INPUT_NAME: {0: "N"}, **{n: {0: "N"} for n in names}},
    )
    model = onnx.load(str(tmp))
    onnx.helper.set_model_props(model, {METADATA_KEY: meta.to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    tmp.replace(out)
    return out


def check_export(wrapper, onnx_path: str | Path, inputs: np.ndarray, tolerance: float = 1e-4) -> dict[str, float]:
    """Max |ORT - torch| over every output on ``inputs`` (N, 1, S, S); raises when above."""
    import torch  # torch only once a checkpoint is exported

    names = output_names(wrapper)
    try:
        sess = onnx_session(onnx_path)
    except ModelError as exc:
        raise ExportCheckError(str(exc)) from exc
    got = dict(zip(names, sess.run(names, {INPUT_NAME: inputs.astype(np.float32)})))
    with torch.no_grad():
        ref = dict(zip(names, (t.numpy() for t in wrapper(torch.from_numpy(inputs.astype(np.float32))))))
    diffs: dict[str, float] = {f"{n.removesuffix('_score') if n != SCORE_OUTPUT else n}_max_abs_diff":
                               float(np.max(np.abs(got[n] - ref[n]))) for n in names}
    diffs["films"] = int(inputs.shape[0])
    heat = got[HEATMAP_OUTPUT]
    if got[SCORE_OUTPUT].shape != (inputs.shape[0],) or heat.ndim != 3:
        raise ExportCheckError(f"unexpected output shapes {got[SCORE_OUTPUT].shape}, {heat.shape}")
    if not (0.0 <= heat.min() and heat.max() <= 1.0):
        raise ExportCheckError("heatmap outside [0, 1]")
    worst = max(v for k, v in diffs.items() if k != "films")
    if not worst <= tolerance:
        raise ExportCheckError(f"ONNX Runtime vs PyTorch max abs difference {worst:.3g} > {tolerance:g} ({diffs})")
    return diffs


def check_size(path: Path, max_bytes: int = MAX_BYTES, stored: str = "") -> int:
    """``path``'s size in bytes; ExportCheckError when it is over ``max_bytes`` (``stored``: how
    its weights are stored, for the message, e.g. " stored as float16")."""
    size = path.stat().st_size
    if size > max_bytes:
        raise ExportCheckError(f"{path} is {size / 2**20:.1f} MiB{stored}, over the {max_bytes / 2**20:.0f} MiB limit")
    return size


def check_films(paths: Sequence[Path], spec: PreprocessSpec) -> np.ndarray:
    """Real films through the worker's reader and the shared preprocess()."""
    return np.stack([preprocess(read_pixels(Path(p)), spec) for p in paths])


def export_checkpoint(checkpoint: str | Path, out: str | Path, films: Sequence[Path] | None = None,
                      data_root: str | Path | None = None, check_manifest: str | Path | None = None,
                      n_check: int = 16, tolerance: float = 1e-4, name: str | None = None,
                      version: str | None = None, ck: dict[str, Any] | None = None,
                      max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """Export and check; films come from ``films`` or the validation rows of a manifest.

    ``max_bytes``: the largest file written (``make train`` passes twice the limit for its float32
    intermediate, whose float16 copy is the file it ships and checks against ``MAX_BYTES``).

    ``ck``: the checkpoint dict when already loaded (and calibrated). Raises ExportCheckError
    (nothing written) when ONNX Runtime and PyTorch disagree or no film can be checked on."""
    wrapper, ck = load_checkpoint(checkpoint, ck)
    if version is None:  # date, training manifest and the weights themselves
        digest = file_sha256(checkpoint)[:6]
        sha = ck.get("training_manifest_sha256", "")[:8] or "nomanifest"
        version = f"{build_metadata(ck).created[:10].replace('-', '.')}-{sha}-{digest}"
    meta = build_metadata(ck, name, version)
    paths = list(films or [])
    if not paths and check_manifest is not None:
        root = Path(data_root) if data_root else Path(check_manifest).resolve().parent
        rows = read_manifest(check_manifest)
        pick = [e for e in rows if e.split == "val"] or rows
        step = max(1, len(pick) // n_check)
        paths = [resolve(e, root) for e in pick[::step][:n_check]]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} check film(s) not found, e.g. {missing[0]} (give --data-root)")
    if not paths:
        raise ExportCheckError("no real films to check the export on (give films or a manifest)")
    out = Path(out)
    export_onnx(wrapper, meta, out)
    try:
        diffs = check_export(wrapper, out, check_films(paths, meta.preprocessing), tolerance)
        size = check_size(out, max_bytes)
    except Exception:
        out.unlink(missing_ok=True)
        raise
    report = {"path": str(out), "bytes": size, "metadata": meta.name + " " + meta.version, **diffs}
    log.info("exported", extra=report)
    return report
