"""Half the model file: weights stored as float16, computed in float32, checked on validation.

Every float32 initializer of at least ``min_elements`` values is stored as float16 and cast
back to float32 by a ``Cast`` node in front of the graph (ONNX operator ``Cast``, opset 13+),
so ONNX Runtime folds the casts once when the session starts and every operator still
computes in float32 (no float16 kernels needed on a hospital CPU). The file shrinks to about
half; the weights change by float16 rounding only (relative error <= 2^-11).

The check (:func:`check_half`) scores the validation films with both files and fails unless
the triage decisions (at the default operating point) and the nodule/mass flags agree on at
least ``min_agreement`` of the films and the abnormal AUROC moves by at most
``max_auroc_change``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxr_triage.contract.model_file import INPUT_NAME, NODULE_OUTPUT, SCORE_OUTPUT
from cxr_triage.inference.scorer import onnx_session
from cxr_triage.training.export import ExportCheckError
from cxr_triage.training.report_scoring import model_session
from cxr_triage.training.train_metrics import auroc

MIN_AGREEMENT = 0.995
MAX_AUROC_CHANGE = 0.002


def halve_weights(src: str | Path, dst: str | Path, min_elements: int = 1024) -> Path:
    """Write ``src`` (ONNX) to ``dst`` with its large float32 initializers stored as float16
    behind Cast-to-float32 nodes; metadata, inputs and outputs unchanged."""
    import onnx  # onnx only once a model is exported
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    casts, keep = [], []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            keep.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "__fp16")
        keep.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + "__to_fp32"))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(model)
    dst = Path(dst)
    tmp = dst.with_suffix(".tmp.onnx")
    onnx.save(model, str(tmp))
    tmp.replace(dst)
    return dst


def _outputs(path: Path, inputs: np.ndarray) -> dict[str, np.ndarray]:
    sess = onnx_session(path, 2)
    names = [n for n in (SCORE_OUTPUT, NODULE_OUTPUT) if n in {o.name for o in sess.get_outputs()}]
    parts = [sess.run(names, {INPUT_NAME: inputs[i:i + 32].astype(np.float32)}) for i in range(0, len(inputs), 32)]
    return {n: np.concatenate([p[j] for p in parts]).astype(np.float64) for j, n in enumerate(names)}


def check_half(full: str | Path, half: str | Path, inputs: np.ndarray, labels: np.ndarray,
               min_agreement: float = MIN_AGREEMENT, max_auroc_change: float = MAX_AUROC_CHANGE) -> dict[str, Any]:
    """Compare the float16-stored file ``half`` with ``full`` on preprocessed validation films
    ``inputs`` (N, 1, S, S) with abnormal ``labels`` (N,): share of films with the same
    decision at the default operating point, the same nodule/mass flag, and both AUROCs.
    Raises ExportCheckError when an agreement is below ``min_agreement`` or the AUROC
    changes by more than ``max_auroc_change``."""
    _, meta = model_session(full, threads=1)
    _, t = meta.threshold()
    a, b = _outputs(Path(full), inputs), _outputs(Path(half), inputs)
    res: dict[str, Any] = {"films": int(len(inputs)),
                           "decision_agreement": float(np.mean((a[SCORE_OUTPUT] >= t) == (b[SCORE_OUTPUT] >= t))),
                           "auroc_fp32": auroc(a[SCORE_OUTPUT], labels), "auroc_fp16": auroc(b[SCORE_OUTPUT], labels),
                           "max_abs_score_diff": float(np.max(np.abs(a[SCORE_OUTPUT] - b[SCORE_OUTPUT])))}
    nodule = meta.nodule_threshold()
    if nodule is not None and NODULE_OUTPUT in a:
        res["nodule_flag_agreement"] = float(np.mean((a[NODULE_OUTPUT] >= nodule[1]) == (b[NODULE_OUTPUT] >= nodule[1])))
    worst = min(v for k, v in res.items() if k.endswith("agreement"))
    change = abs(res["auroc_fp32"] - res["auroc_fp16"])
    res["auroc_change"] = change
    if worst < min_agreement or not change <= max_auroc_change:
        raise ExportCheckError(f"float16 weights: agreement {worst:.4f} (< {min_agreement}?) or AUROC change "
                               f"{change:.4f} (> {max_auroc_change}?) on {len(inputs)} validation films: {res}")
    return res
