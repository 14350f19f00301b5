"""ONNX Runtime scoring: one session per process, batched, described by the model file itself.

The model's preprocessing, thresholds, name and version come from the ``cxr_triage`` entry
of the ONNX ``metadata_props`` (:class:`ModelMetadata`), so a retrained model drops in
without code changes. ORT sessions are thread-safe for ``run`` and expensive to create: the
process keeps one per (model file, thread count) via :func:`get_scorer`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort

from cxr_triage.contract.files import file_sha256
from cxr_triage.contract.model_file import (
    HEATMAP_OUTPUT,
    INPUT_NAME,
    METADATA_KEY,
    NODULE_OUTPUT,
    SCORE_OUTPUT,
    ModelMetadata,
)


class ModelError(RuntimeError):
    """The model file is missing, unreadable or does not follow the cxr-triage contract."""


def onnx_session(model: str | Path | bytes, threads: int = 2) -> ort.InferenceSession:
    """The one place an ONNX Runtime session is made (the worker, reports, checks, export).

    model: a model file path, or a serialised ModelProto (e.g. a feature-output variant).
    threads: intra-op threads (>= 1); inter-op 1, sequential, CPU provider, warnings only.
    Raises :class:`ModelError` naming the file when ONNX Runtime cannot load it.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several types for a bad file
        name = "model bytes" if isinstance(model, bytes) else str(model)
        raise ModelError(f"cannot load model {name}: {type(exc).__name__}: {exc}") from exc


class ModelOutputs(NamedTuple):
    """What one :meth:`Scorer.score` call returns, per film of the batch.

    scores: float32 (N,), calibrated P(abnormal).
    nodule_scores: float32 (N,), calibrated P(nodule or mass); None when the model has no
        usable ``nodule_score`` output (no such output, or no nodule/mass thresholds).
    heatmaps: float32 (N, h, w) in [0, 1]; None when the model has no ``heatmap`` output.
        Returned whether or not the model's heatmap is validated: showing it is the
        caller's decision (``ModelMetadata.heatmap_validated``).
    """

    scores: np.ndarray
    nodule_scores: np.ndarray | None
    heatmaps: np.ndarray | None


class Scorer:
    """One ONNX Runtime session on the CPU and the model's own metadata."""

    def __init__(self, model_path: str | Path, threads: int = 2, batch_size: int = 8):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelError(f"model file not found: {self.model_path}")
        self.batch_size = max(1, int(batch_size))
        self.session = onnx_session(self.model_path, threads)
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise ModelError(f"{self.model_path} has no '{METADATA_KEY}' metadata entry")
        self.metadata = ModelMetadata.from_json(props[METADATA_KEY])
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if INPUT_NAME not in inputs or SCORE_OUTPUT not in outputs:
            raise ModelError(
                f"{self.model_path} must have input {INPUT_NAME!r} and output {SCORE_OUTPUT!r} "
                f"(has inputs {sorted(inputs)}, outputs {sorted(outputs)})"
            )
        self.has_heatmap = HEATMAP_OUTPUT in outputs
        # the nodule/mass output is used only with operating points to call it at
        self.has_nodule = NODULE_OUTPUT in outputs and bool(self.metadata.nodule_thresholds)
        self._outputs = ([SCORE_OUTPUT] + ([NODULE_OUTPUT] if self.has_nodule else [])
                         + ([HEATMAP_OUTPUT] if self.has_heatmap else []))
        self.sha256 = file_sha256(self.model_path)

    @property
    def input_size(self) -> int:
        return int(self.metadata.preprocessing.size)

    def score(self, batch: np.ndarray) -> ModelOutputs:
        """(N, 1, S, S) float32 -> :class:`ModelOutputs`: scores (N,), nodule/mass scores
        (N,) or None, heatmaps (N, h, w) or None.

        Runs in chunks of ``batch_size`` so a large request cannot exhaust memory.
        """
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 1:
            raise ValueError(f"expected (N, 1, S, S), got {batch.shape}")
        got: dict[str, list[np.ndarray]] = {name: [] for name in self._outputs}
        for start in range(0, len(batch), self.batch_size):
            out = self.session.run(self._outputs, {INPUT_NAME: batch[start:start + self.batch_size]})
            for name, value in zip(self._outputs, out):
                arr = np.asarray(value, dtype=np.float32)
                got[name].append(arr if name == HEATMAP_OUTPUT else arr.reshape(-1))
        if not got[SCORE_OUTPUT]:
            return ModelOutputs(np.zeros(0, np.float32), None, None)
        joined = {name: np.concatenate(parts) for name, parts in got.items()}
        return ModelOutputs(joined[SCORE_OUTPUT], joined.get(NODULE_OUTPUT), joined.get(HEATMAP_OUTPUT))


_SCORERS: dict[tuple[str, int], Scorer] = {}
_LOCK = threading.Lock()


def get_scorer(model_path: str | Path, threads: int = 2, batch_size: int = 8) -> Scorer:
    """The process's scorer for this model file (created once; reloaded if the file changed)."""
    key = (str(Path(model_path).resolve()), int(threads))
    with _LOCK:
        scorer = _SCORERS.get(key)
        if scorer is None or scorer.sha256 != file_sha256(model_path):
            scorer = Scorer(model_path, threads=threads, batch_size=batch_size)
            _SCORERS[key] = scorer
        scorer.batch_size = max(1, int(batch_size))
        return scorer
