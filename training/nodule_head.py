"""Refit a model file's nodule/mass output as a linear probe on its own pooled features.

Why (issue 22): the trained nodule/mass output of the shipped model was learned beside 15 other
outputs from mostly abnormal films; a class-balanced logistic regression of *Nodule/Mass films
against normal films* on the same pooled features separates them better. Chosen on the
validation split (model/MODEL_CARD.md, *Nodule/mass head*); the backbone, the abnormality
output and the heatmap are unchanged.

Steps:

1. the pooled last feature map of each member (the input of its ``fc`` layer, (N, C) with C =
   1280 for EfficientNet-Lite0), through the report's pipeline (the worker's reader and the
   model's own preprocessing), for the training part's Nodule/Mass and normal films (step 2) and
   every validation film of ``sources`` (each film read once);
2. an L2 logistic regression (scikit-learn, ``class_weight="balanced"``, features standardised
   on the training films): Nodule/Mass films against normal films
   (:func:`~cxr_triage.training.targets.nodule_vs_normal`: status known, the other abnormal films
   left out). ``C`` from :data:`C_GRID` by the
   validation AUROC against normals (all ``sources`` pooled);
3. folded into the file: member k's ``fc`` row 1 (the nodule/mass logit) becomes
   ``K * w_k / scale_k`` and its bias shares the intercept, so the mean over the K members'
   logits (the graph's ensemble) equals the probe's decision function. Float16-stored weights
   (``<name>__fp16``, :func:`cxr_triage.training.export_fp16.halve_weights`) stay float16;
4. calibrated on validation (:func:`cxr_triage.training.val_calibration.nodule_calibration`:
   temperature and shift in the graph, the points by share of validation normals flagged and
   whether the flag is shown) and checked: the written file's nodule/mass logits must equal
   the probe's within :data:`TOLERANCE` on the validation films, else :class:`HeadError`.

The metadata gets the new points (the old ones are dropped: they belonged to another output),
the validation figures, ``extra["nodule_head"]`` (C, films, the input file's SHA-256) and a
``-nh`` version suffix; the file's SHA-256 changes, so a site threshold no longer binds.

    python -m cxr_triage.training.nodule_head --model model/cxr_triage_effnet_lite0.onnx \\
        --manifest model/default_split.csv --data-root ../shared/data --out runs/nh.onnx
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxr_triage.contract.files import file_sha256
from cxr_triage.contract.model_file import INPUT_NAME, NODULE_OUTPUT
from cxr_triage.inference.scorer import onnx_session
from cxr_triage.training.manifest import Entry, ManifestError, read_manifest, resolve
from cxr_triage.training.nodule_point import SOURCES, write_metadata
from cxr_triage.training.report_scoring import input_batches, model_session
from cxr_triage.training.targets import nodule_truth, nodule_vs_normal
from cxr_triage.training.train_metrics import auroc
from cxr_triage.training.val_calibration import nodule_calibration

#: inverse L2 strengths tried (standardised features); chosen on validation
C_GRID = (1e-4, 3e-4, 1e-3, 3e-3)
#: the nodule/mass row of every member's fc layer (training/targets.py: abnormal, nodule/mass, findings)
NODULE_ROW = 1
#: largest |written logit - probe logit| accepted on validation films (float16 weights)
TOLERANCE = 0.05
VERSION_SUFFIX = "-nh"


class HeadError(ValueError):
    """The probe cannot be fitted or written (no films of a class, an unknown graph layout, or a
    written file whose outputs disagree with the probe)."""


def probe_films(entries: Sequence[Entry], split: str, sources: Sequence[str]) -> tuple[list[Entry], np.ndarray]:
    """(films, truth (N,) int): ``split`` films of ``sources`` that are Nodule/Mass films or
    normal films, status known (label conflicts left out)."""
    picked = [e for e in entries if e.split == split and e.source in sources]
    keep = np.flatnonzero(nodule_vs_normal(picked))
    return [picked[i] for i in keep], nodule_truth(picked)[keep]


def _fc_layers(model: Any) -> list[Any]:
    """The members' fc Gemm nodes, in member order (``net.members.K.fc`` or ``net.fc``)."""
    gemms = [n for n in model.graph.node if n.op_type == "Gemm" and n.input[1].endswith("fc.weight")]
    if not gemms:
        raise HeadError("no fc layer (Gemm on '*fc.weight'): not a cxr-triage classifier export")
    return sorted(gemms, key=lambda n: n.input[1])


def model_inputs(model_path: Path, paths: Sequence[Path]) -> np.ndarray:
    """(N, 1, S, S) float32: the films at ``paths`` read and preprocessed with the model's own spec
    (:func:`cxr_triage.training.report_scoring.input_batches`)."""
    _, meta = model_session(model_path, threads=1)
    return np.concatenate(list(input_batches(paths, meta.preprocessing, 32)))


def session_with_outputs(model: Any, names: Sequence[str], threads: int = 2) -> tuple[Any, list[str]]:
    """(ONNX Runtime session, ``names``): the loaded ONNX ``model`` (a ModelProto, changed in
    place) with the intermediate float tensors ``names`` added as outputs."""
    from onnx import TensorProto, helper

    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return onnx_session(model.SerializeToString(), threads), list(names)


def feature_session(model_path: Path, threads: int = 2) -> tuple[Any, list[str]]:
    """(ONNX Runtime session, output names): the model with its K members' fc inputs as outputs.

    Raises HeadError when the file has no fc layer."""
    import onnx

    model = onnx.load(str(model_path))
    return session_with_outputs(model, [g.input[0] for g in _fc_layers(model)], threads)


def features_of(session: tuple[Any, list[str]], inputs: np.ndarray) -> np.ndarray:
    """(N, K*C) float64: the K members' fc inputs side by side, for preprocessed ``inputs``
    (N, 1, S, S), from a :func:`feature_session`."""
    sess, names = session
    out = [np.concatenate(sess.run(names, {INPUT_NAME: inputs[i:i + 32]}), axis=1) for i in range(0, len(inputs), 32)]
    return np.concatenate(out).astype(np.float64)


def pooled_features(model_path: Path, paths: Sequence[Path], threads: int = 2) -> np.ndarray:
    """(N, K*C) float64: :func:`features_of` the films at ``paths``. Raises HeadError when the
    file has no fc layer (before any film is read)."""
    session = feature_session(model_path, threads)
    return features_of(session, model_inputs(model_path, paths))


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
              grid: Sequence[float] = C_GRID) -> dict[str, Any]:
    """The probe with the best validation AUROC over ``grid``: {C, coef (D,), intercept,
    mean (D,), scale (D,), val_auroc, by_c}; coef/intercept act on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    for name, y in (("training", y_train), ("validation", y_val)):
        if y.min() == y.max():
            raise HeadError(f"the {name} films hold only one class (Nodule/Mass vs normal)")
    scaler = StandardScaler().fit(x_train)
    xt, xv = scaler.transform(x_train), scaler.transform(x_val)
    best: dict[str, Any] = {}
    by_c = {}
    for c in grid:
        clf = LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit(xt, y_train)
        by_c[c] = auroc(clf.decision_function(xv), y_val)
        if not best or by_c[c] > best["val_auroc"]:
            best = {"C": c, "coef": clf.coef_[0].copy(), "intercept": float(clf.intercept_[0]), "val_auroc": by_c[c]}
    return {**best, "mean": scaler.mean_.copy(), "scale": scaler.scale_.copy(), "by_c": by_c}


def probe_logits(probe: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """(N,) the probe's decision function on raw pooled features (N, D)."""
    return np.asarray(((x - probe["mean"]) / probe["scale"]) @ probe["coef"] + probe["intercept"])


def write_probe(src: Path, probe: dict[str, Any], calibration: dict[str, Any], dst: Path) -> Path:
    """``src`` with member fc rows :data:`NODULE_ROW` set to the probe and the nodule/mass
    temperature and shift set to ``calibration``'s; written to ``dst`` (metadata unchanged)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    gemms = _fc_layers(model)
    k = len(gemms)
    w = probe["coef"] / probe["scale"]
    b = probe["intercept"] - float(np.sum(probe["coef"] * probe["mean"] / probe["scale"]))
    width = w.size // k
    for m, gemm in enumerate(gemms):
        for name, row in ((gemm.input[1], k * w[m * width:(m + 1) * width]), (gemm.input[2], np.array(b))):
            stored = inits.get(name) or inits.get(name + "__fp16")
            if stored is None:
                raise HeadError(f"initializer {name!r} not found")
            arr = numpy_helper.to_array(stored).copy()
            arr[NODULE_ROW] = row.astype(arr.dtype)
            stored.CopyFrom(numpy_helper.from_array(arr, stored.name))
    for name in ("nodule_temperature", "nodule_shift"):
        if name not in inits:
            raise HeadError(f"initializer {name!r} not found: the file has no calibrated nodule/mass output")
        arr = numpy_helper.to_array(inits[name]).copy()
        arr[...] = calibration[name]
        inits[name].CopyFrom(numpy_helper.from_array(arr, name))
    onnx.checker.check_model(model)
    tmp = dst.with_suffix(".tmp.onnx")
    onnx.save(model, str(tmp))
    tmp.replace(dst)
    return dst


def refit(model: Path, manifest: Path, data_root: Path, out: Path, sources: Sequence[str] = SOURCES,
          threads: int = 2) -> dict[str, Any]:
    """Fit, write and check the probe (module docstring); returns the figures."""
    entries = read_manifest(manifest)
    films = {s: probe_films(entries, s, sources) for s in ("train", "val")}
    for s, (es, _) in films.items():
        if not es:
            raise ManifestError(f"no {s} films of {', '.join(sources)} with a known nodule/mass status")
    session = feature_session(model, threads)
    x_train = features_of(session, model_inputs(model, [resolve(e, data_root) for e in films["train"][0]]))
    # every validation film of the sources, read once: the probe's choice of C (its Nodule/Mass
    # and normal films), the calibration (all of them, as the export calibrates) and the check
    val_all = [e for e in entries if e.split == "val" and e.source in sources]
    inputs_val = model_inputs(model, [resolve(e, data_root) for e in val_all])
    x_val = features_of(session, inputs_val)
    probe = fit_probe(x_train, films["train"][1], x_val[nodule_vs_normal(val_all)], films["val"][1])
    z_all = probe_logits(probe, x_val)
    cal = nodule_calibration(val_all, z_all, np.ones(len(val_all), dtype=bool))
    if not cal["nodule_thresholds"]:
        raise HeadError("validation holds no Nodule/Mass film or no normal film: cannot calibrate")
    write_probe(model, probe, cal, out)
    sess, meta = model_session(out, threads)
    got = np.concatenate([sess.run([NODULE_OUTPUT], {INPUT_NAME: inputs_val[i:i + 32]})[0]
                          for i in range(0, len(inputs_val), 32)])
    p = np.clip(got.astype(np.float64), 1e-7, 1 - 1e-7)
    written = np.log(p / (1 - p)) * cal["nodule_temperature"] - cal["nodule_shift"]
    worst = float(np.max(np.abs(written - z_all)[(p > 1e-6) & (p < 1 - 1e-6)], initial=0.0))
    if worst > TOLERANCE:
        raise HeadError(f"the written file disagrees with the probe by {worst:.3g} logits (limit {TOLERANCE})")
    figures = {"C": probe["C"], "val_auroc_vs_normals_by_c": probe["by_c"], "train_films": len(films["train"][0]),
               "train_positive": int(films["train"][1].sum()), "val_films": len(films["val"][0]),
               "val_positive": int(films["val"][1].sum()), "max_logit_difference": worst,
               "nodule_metrics": cal["nodule_metrics"]}
    meta.nodule_thresholds = dict(cal["nodule_thresholds"])
    meta.nodule_default_operating_point = cal["nodule_default_operating_point"]
    meta.nodule_flag_shown = cal["nodule_flag_shown"]
    meta.validation_metrics = {**meta.validation_metrics, "nodule": cal["nodule_metrics"]}
    if not meta.version.endswith(VERSION_SUFFIX):
        meta.version += VERSION_SUFFIX
    # the graph's nodule/mass calibration is recorded in the metadata too (training/export.py)
    meta.extra = {**meta.extra, "nodule_temperature": float(cal["nodule_temperature"]),
                  "nodule_shift": float(cal["nodule_shift"]), "nodule_head": {
        "rule": "L2 logistic regression, Nodule/Mass vs normal films, on the members' pooled features",
        "C": probe["C"], "sources": list(sources), "from_sha256": file_sha256(model),
        "manifest_sha256": file_sha256(manifest), "train_films": figures["train_films"],
        "train_positive": figures["train_positive"],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m cxr_triage.training.nodule_head"}}
    write_metadata(out, meta, out)
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cxr_triage.training.nodule_head", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", required=True, help="ONNX model file of this project")
    ap.add_argument("--manifest", required=True, help="manifest with labels and the split the model was made on")
    ap.add_argument("--data-root", default="../shared/data", help="folder the manifest's files are relative to")
    ap.add_argument("--sources", nargs="+", default=list(SOURCES), help="sources of the films used")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True, help="model file to write (may be --model)")
    args = ap.parse_args(argv)
    try:
        figures = refit(Path(args.model), Path(args.manifest), Path(args.data_root), Path(args.out),
                        args.sources, args.threads)
    except (HeadError, ManifestError, OSError, ValueError) as exc:
        print(f"nodule_head: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(figures, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
