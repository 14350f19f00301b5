"""ONNX Runtime scoring: one session per process, batched, described by the model file itself.

The model's preprocessing, thresholds, name and version come from the ``cxr_triage`` entry
of the ONNX ``metadata_props`` (:class:`ModelMetadata`), so a retrained model drops in
without code changes. ORT sessions are thread-safe for ``run`` and expensive to create: the
process keeps one per (model file, thread count) via :func:`get_scorer`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cxr_triage.contract.files import file_sha256
from cxr_triage.contract.model_file import HEATMAP_OUTPUT, INPUT_NAME, METADATA_KEY, SCORE_OUTPUT, ModelMetadata


class ModelError(RuntimeError):
    """The model file is missing, unreadable or does not follow the cxr-triage contract."""


class Scorer:
    """One ONNX Runtime session on the CPU and the model's own metadata."""

    def __init__(self, model_path: str | Path, threads: int = 2, batch_size: int = 8):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelError(f"model file not found: {self.model_path}")
        self.batch_size = max(1, int(batch_size))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelError(f"cannot load model {self.model_path}: {exc}") from exc
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
        self._outputs = [SCORE_OUTPUT] + ([HEATMAP_OUTPUT] if self.has_heatmap else [])
        self.sha256 = file_sha256(self.model_path)

    @property
    def input_size(self) -> int:
        return int(self.metadata.preprocessing.size)

    def score(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, 1, S, S) float32 -> scores (N,) and heatmaps (N, h, w) or None.

        Runs in chunks of ``batch_size`` so a large request cannot exhaust memory.
        """
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 1:
            raise ValueError(f"expected (N, 1, S, S), got {batch.shape}")
        scores, heatmaps = [], []
        for start in range(0, len(batch), self.batch_size):
            out = self.session.run(self._outputs, {INPUT_NAME: batch[start:start + self.batch_size]})
            scores.append(np.asarray(out[0], dtype=np.float32).reshape(-1))
            if self.has_heatmap:
                heatmaps.append(np.asarray(out[1], dtype=np.float32))
        if not scores:
            return np.zeros(0, np.float32), None
        return np.concatenate(scores), (np.concatenate(heatmaps) if heatmaps else None)


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
