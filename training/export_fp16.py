"""Half the model file: weights stored as float16, computed in float32, checked on validation.

Every float32 initializer of at least ``min_elements`` values is stored as float16 and cast
back to float32 by a ``Cast`` node in front of the graph (ONNX operator ``Cast``, opset 13+),
so ONNX Runtime folds the casts once when the session starts and every operator still
computes in float32 (no float16 kernels needed on a hospital CPU). The file shrinks to about
half; the weights change by float16 rounding only (relative error <= 2^-11).

The check (:func:`check_half`) scores the validation films with both files and fails unless
the triage decisions (at the default operating point) and the nodule/mass flags agree on at
least ``min_agreement`` of the films and the abnormal AUROC moves by at most
``max_auroc_change``. :func:`check_half_films` does the same on a manifest's real films,
scored as the test report scores them (the worker's reader, the model's own preprocessing),
and also holds the nodule/mass AUROC (Nodule/Mass films against normals) to
``max_auroc_change``. From the command line (a shipped file stored again)::

    python -m cxr_triage.training.export_fp16 --model model/cxr_triage_effnet_lite0.onnx \
        --out half.onnx --manifest split.csv --splits val test --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxr_triage.contract.files import file_sha256
from cxr_triage.contract.model_file import INPUT_NAME, NODULE_OUTPUT, SCORE_OUTPUT
from cxr_triage.inference.scorer import onnx_session
from cxr_triage.training.export import ExportCheckError
from cxr_triage.training.manifest import Entry, read_manifest, resolve
from cxr_triage.training.nodule_point import write_metadata
from cxr_triage.training.report_scoring import model_outputs, model_session
from cxr_triage.training.targets import nodule_known, nodule_normals, nodule_truth
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
    a, b = _outputs(Path(full), inputs), _outputs(Path(half), inputs)
    res = compare_outputs(full, a, b, labels)
    return _judge(res, len(inputs), min_agreement, max_auroc_change)


def compare_outputs(full: str | Path, a: dict[str, np.ndarray], b: dict[str, np.ndarray], labels: np.ndarray,
                    nodule_pos: np.ndarray | None = None, nodule_neg: np.ndarray | None = None) -> dict[str, Any]:
    """Agreement of two files' outputs ``a`` and ``b`` ({output: (N,)}) on the same films, at
    ``full``'s default operating points: decisions, nodule/mass flags, the abnormal AUROC on
    ``labels`` (N,) and, given (N,) bool masks of Nodule/Mass films and normal films, the
    nodule/mass AUROC between them."""
    _, meta = model_session(full, threads=1)
    _, t = meta.threshold()
    res: dict[str, Any] = {"films": int(len(labels)),
                           "decision_agreement": float(np.mean((a[SCORE_OUTPUT] >= t) == (b[SCORE_OUTPUT] >= t))),
                           "auroc_fp32": auroc(a[SCORE_OUTPUT], labels), "auroc_fp16": auroc(b[SCORE_OUTPUT], labels),
                           "max_abs_score_diff": float(np.max(np.abs(a[SCORE_OUTPUT] - b[SCORE_OUTPUT])))}
    nodule = meta.nodule_threshold()
    if nodule is not None and NODULE_OUTPUT in a:
        res["nodule_flag_agreement"] = float(np.mean((a[NODULE_OUTPUT] >= nodule[1]) == (b[NODULE_OUTPUT] >= nodule[1])))
        res["max_abs_nodule_diff"] = float(np.max(np.abs(a[NODULE_OUTPUT] - b[NODULE_OUTPUT])))
        if nodule_pos is not None and nodule_neg is not None:
            use, y = nodule_pos | nodule_neg, nodule_pos.astype(int)
            res["nodule_auroc_fp32"] = auroc(a[NODULE_OUTPUT][use], y[use])
            res["nodule_auroc_fp16"] = auroc(b[NODULE_OUTPUT][use], y[use])
    return res


def _judge(res: dict[str, Any], films: int, min_agreement: float, max_auroc_change: float) -> dict[str, Any]:
    """``res`` with its AUROC changes added; ExportCheckError when a check fails."""
    worst = min(v for k, v in res.items() if k.endswith("agreement"))
    change = abs(res["auroc_fp32"] - res["auroc_fp16"])
    res["auroc_change"] = change
    changes = [change]
    if "nodule_auroc_fp32" in res:
        res["nodule_auroc_change"] = abs(res["nodule_auroc_fp32"] - res["nodule_auroc_fp16"])
        changes.append(res["nodule_auroc_change"])
    if worst < min_agreement or not max(changes) <= max_auroc_change:
        raise ExportCheckError(f"float16 weights: agreement {worst:.4f} (< {min_agreement}?) or AUROC change "
                               f"{max(changes):.4f} (> {max_auroc_change}?) on {films} films: {res}")
    return res


def check_half_films(full: str | Path, half: str | Path, entries: Sequence[Entry], root: Path,
                     min_agreement: float = MIN_AGREEMENT,
                     max_auroc_change: float = MAX_AUROC_CHANGE) -> dict[str, Any]:
    """:func:`check_half` on real films ``entries`` (files under ``root``), each file scored
    by :func:`cxr_triage.training.report_scoring.model_outputs` (as the test report does),
    with the nodule/mass AUROC of the films whose status is known (label conflicts left out)
    held to the same limit. Raises ExportCheckError when a check fails."""
    paths = [resolve(e, root) for e in entries]
    a, b = model_outputs(full, paths), model_outputs(half, paths)
    labels = np.array([e.label for e in entries])
    positive = nodule_known(entries) & nodule_truth(entries).astype(bool)
    res = compare_outputs(full, a, b, labels, positive, nodule_normals(entries))
    return _judge(res, len(entries), min_agreement, max_auroc_change)


def main(argv: list[str] | None = None) -> int:
    """Store ``--model``'s weights as float16 in ``--out`` and check it on each of ``--splits``."""
    ap = argparse.ArgumentParser(prog="cxr_triage.training.export_fp16", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", required=True, help="float32 ONNX model file")
    ap.add_argument("--out", required=True, help="float16-stored file to write")
    ap.add_argument("--manifest", required=True, help="manifest CSV with a split column (labels)")
    ap.add_argument("--splits", nargs="+", default=["val"], help="splits to check on, each on its own")
    ap.add_argument("--data-root", default="../shared/data", help="folder the manifest's files are relative to")
    args = ap.parse_args(argv)
    halve_weights(args.model, args.out)
    rows = read_manifest(args.manifest)
    out: dict[str, Any] = {"bytes_fp32": Path(args.model).stat().st_size, "bytes_fp16": Path(args.out).stat().st_size}
    try:
        for split in args.splits:
            entries = [e for e in rows if e.split == split]
            out[split] = check_half_films(args.model, args.out, entries, Path(args.data_root))
    except ExportCheckError as exc:
        print(f"export_fp16: {exc}", file=sys.stderr)
        return 1
    stamp_half(Path(args.model), Path(args.out), {**out, "manifest_sha256": file_sha256(args.manifest)})
    print(json.dumps(out, indent=1))
    return 0


def stamp_half(full: Path, half: Path, checks: dict[str, Any]) -> None:
    """Record in ``half``'s metadata that its weights are stored as float16: ``-fp16`` after
    the version (results name the file they came from), and the float32 file's SHA-256 and
    ``checks`` under ``extra["float16_storage"]``. The outputs do not change."""
    _, meta = model_session(half, threads=1)
    if not meta.version.endswith("-fp16"):
        meta.version += "-fp16"
    meta.extra = {**meta.extra, "float16_storage": {"from_sha256": file_sha256(full), "checks": checks}}
    write_metadata(half, meta, half)


if __name__ == "__main__":
    sys.exit(main())
