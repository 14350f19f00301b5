"""The model's outputs per film through the node's own film pipeline, the gate included.

``cxr-triage evaluate`` scores films with the node's :class:`~cxr_triage.inference.pipeline.Triager`
(reader -> intended-use gate -> preprocessing -> ONNX Runtime). A report that needs more than
the score (the pooled features of the source probe, the heatmap of the pointing game) runs the
model itself: :func:`gated_model_outputs` gives it every output for the films the gate lets
through, read and preprocessed by the Triager, and names the others with the gate's reason
(e.g. a 224 px film is ``too_small`` under ``[inference] min_image_size``), so such a report
and ``evaluate`` judge the same films.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

from cxr_triage.config import load_config
from cxr_triage.contract.model_file import INPUT_NAME
from cxr_triage.evaluation.model_checks import onnx_feature_model
from cxr_triage.inference.pipeline import Triager
from cxr_triage.inference.scorer import onnx_session


@dataclass
class GatedOutputs:
    """What :func:`gated_model_outputs` returns.

    outputs: output name -> float64 array whose first axis is ``assessed`` (``score`` (M,),
        ``nodule_score`` (M,), ``heatmap`` (M, h, w), ``features`` (M, C): those the model has).
    assessed: indices into the given paths of the M films scored, in order.
    refused: (index, reason code, detail) of each film the reader or the gate refused.
    """

    outputs: dict[str, np.ndarray]
    assessed: list[int]
    refused: list[tuple[int, str, str]]


def _session_with_features(model_path: Path, threads: int) -> ort.InferenceSession:
    """The model with its pooled last feature map as an extra ``features`` output, or the model
    as it is when it has no class-activation map to take it from."""
    try:
        return onnx_session(onnx_feature_model(model_path), threads)
    except ValueError:
        return onnx_session(model_path, threads)


def gated_model_outputs(model_path: str | Path, paths: Sequence[str | Path], cfg: Any = None,
                        threads: int = 2, batch: int = 32) -> GatedOutputs:
    """Every output of the ONNX model for the films of ``paths`` that the Triager's reader and
    gate accept (gate limits from ``cfg``'s ``[inference]``, default configuration without
    ``cfg``), preprocessed by the Triager from the model's own metadata; ``batch`` films per
    ONNX Runtime run. Raises ModelError for a model file that cannot be loaded."""
    cfg = cfg if cfg is not None else load_config(None)
    # the site threshold file is bound to one model file and plays no part in the outputs
    triager = Triager(cfg.replace(inference={"site_threshold_file": ""}), model_path=Path(model_path),
                      threads=threads)
    session = _session_with_features(Path(model_path), threads)
    got: dict[str, list[np.ndarray]] = {o.name: [] for o in session.get_outputs()}
    assessed: list[int] = []
    refused: list[tuple[int, str, str]] = []
    ready: list[np.ndarray] = []
    for index, path in enumerate(paths):
        result, tensor = triager.prepare_path(path)
        if tensor is None:
            reason = result.reason.value if result.reason else "unknown"
            refused.append((index, reason, result.reason_detail or ""))
            continue
        assessed.append(index)
        ready.append(tensor)
        if len(ready) >= batch:
            _run(session, ready, got)
            ready = []
    _run(session, ready, got)
    outputs = {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in got.items()}
    return GatedOutputs(outputs, assessed, refused)


def _run(session: ort.InferenceSession, tensors: list[np.ndarray], got: dict[str, list[np.ndarray]]) -> None:
    """One ONNX Runtime run over ``tensors`` (each (1, S, S)); each output appended to ``got``."""
    if not tensors:
        return
    names = list(got)
    for name, value in zip(names, session.run(names, {INPUT_NAME: np.stack(tensors)})):
        got[name].append(np.asarray(value, dtype=np.float64))
