"""Test-split figures of an exported model, with 95% confidence intervals.

Scores the ONNX file with ONNX Runtime exactly as the worker does (reader -> preprocess with
the spec stored in the model -> ``score``), at the thresholds stored in the model (chosen on
validation; nothing here is tuned). Headline figures use the NIH films (one acquisition and
resizing pipeline for both classes); per-source rows show what the model does with each
source, NIH normals alone and the 224 px RSNA normals included.

CIs: AUROC by stratified bootstrap (2,000 resamples, percentile); proportions by Wilson.

    python -m cxr_triage.training.report --model model/cxr_triage_effnet_lite0.onnx \
        --manifest model/default_split.csv --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxr_triage.contract.decision import decide_many
from cxr_triage.training.manifest import Entry, read_manifest, resolve

HEADLINE_SOURCES = ("nih-cxr14", "nih-extra")


def wilson(k: int, n: int) -> tuple[float, float, float]:
    """(proportion, low, high); NaNs when n == 0."""
    if n == 0:
        return (float("nan"),) * 3
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    return k / n, float(ci.low), float(ci.high)


def auroc_ci(scores: np.ndarray, labels: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels)
    if y.min() == y.max():
        return (float("nan"),) * 3
    point = float(roc_auc_score(y, scores))
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    boots = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        boots.append(roc_auc_score(y[idx], scores[idx]))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return point, float(lo), float(hi)


def score_films(model_path: str | Path, paths: Sequence[Path], batch: int = 32, threads: int = 2) -> np.ndarray:
    """Calibrated scores from the ONNX file (ONNX Runtime), preprocessing from its metadata."""
    import onnxruntime as ort

    from cxr_triage.contract.model_file import INPUT_NAME, METADATA_KEY, SCORE_OUTPUT, ModelMetadata
    from cxr_triage.contract.preprocessing import preprocess
    from cxr_triage.training.dataset import read_pixels

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    meta = ModelMetadata.from_json(sess.get_modelmeta().custom_metadata_map[METADATA_KEY])
    out = []
    for i in range(0, len(paths), batch):
        x = np.stack([preprocess(read_pixels(p), meta.preprocessing) for p in paths[i:i + batch]])
        out.append(sess.run([SCORE_OUTPUT], {INPUT_NAME: x})[0])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _fmt(t: tuple[float, float, float]) -> dict[str, float | list[float]]:
    return {"value": round(t[0], 4), "ci95": [round(t[1], 4), round(t[2], 4)]}


def figures(scores: np.ndarray, entries: list[Entry], thresholds: dict[str, float]) -> dict[str, Any]:
    """AUROC and, per operating point, sensitivity / specificity / likely-normal shares."""
    y = np.array([e.label for e in entries])
    nodule = np.array([bool(e.nodule_or_mass) for e in entries])
    res: dict[str, Any] = {"films": len(entries), "abnormal": int(y.sum()), "normal": int((1 - y).sum()),
                           "nodule_or_mass": int(nodule.sum()), "auroc": _fmt(auroc_ci(scores, y))}
    ops = {}
    for name, t in sorted(thresholds.items()):
        flagged = decide_many(scores, t)
        ops[name] = {
            "threshold": t,
            "sensitivity": _fmt(wilson(int(flagged[y == 1].sum()), int((y == 1).sum()))),
            "specificity": _fmt(wilson(int((~flagged[y == 0]).sum()), int((y == 0).sum()))),
            "normals_flagged_likely_normal": _fmt(wilson(int((~flagged[y == 0]).sum()), int((y == 0).sum()))),
            "all_films_likely_normal": _fmt(wilson(int((~flagged).sum()), len(y))),
            "nodule_or_mass_sensitivity": _fmt(wilson(int(flagged[nodule].sum()), int(nodule.sum()))),
        }
    res["operating_points"] = ops
    return res


def test_report(model_path: str | Path, manifest: str | Path, data_root: str | Path,
                out: str | Path | None = None, split: str = "test") -> dict[str, Any]:
    """Figures on one split of the manifest: headline (NIH), per source, all together."""
    import onnxruntime as ort

    from cxr_triage.contract.model_file import METADATA_KEY, ModelMetadata

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    meta = ModelMetadata.from_json(sess.get_modelmeta().custom_metadata_map[METADATA_KEY])
    entries = [e for e in read_manifest(manifest) if e.split == split]
    if not entries:
        raise ValueError(f"{manifest}: no films in split {split!r}")
    root = Path(data_root)
    scores = score_films(model_path, [resolve(e, root) for e in entries])
    head = [i for i, e in enumerate(entries) if e.source in HEADLINE_SOURCES] or list(range(len(entries)))
    report: dict[str, Any] = {
        "model": f"{meta.name} {meta.version}", "split": split, "manifest": str(manifest),
        "thresholds_from": "validation split (stored in the model)",
        "headline_sources": list(HEADLINE_SOURCES),
        "headline": figures(scores[head], [entries[i] for i in head], meta.thresholds),
        "by_source": {},
        "all_sources": figures(scores, entries, meta.thresholds),
    }
    for src in sorted({e.source for e in entries}):
        idx = [i for i, e in enumerate(entries) if e.source == src]
        report["by_source"][src] = figures(scores[idx], [entries[i] for i in idx], meta.thresholds)
    # Each source's normals against all headline abnormal films: equal values mean the model
    # tells normal from abnormal whatever pipeline made the normal film; a low value for one
    # source means its normals look "abnormal" to the model (the source was learned).
    y = np.array([e.label for e in entries])
    abn = [i for i in head if y[i] == 1]
    report["normals_by_source_vs_nih_abnormal_auroc"] = {}
    for src in sorted({e.source for e in entries}):
        norm = [i for i, e in enumerate(entries) if e.source == src and e.label == 0]
        if norm and abn:
            idx = abn + norm
            report["normals_by_source_vs_nih_abnormal_auroc"][src] = _fmt(auroc_ci(scores[idx], y[idx]))
    nih_norm = [i for i in head if entries[i].label == 0]
    report["nih_normals_alone"] = figures(scores[nih_norm], [entries[i] for i in nih_norm], meta.thresholds)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2))
        scores_csv = Path(out).with_suffix(".scores.csv")
        with scores_csv.open("w") as fh:
            fh.write("file,source,label,score\n")
            for e, s in zip(entries, scores):
                fh.write(f"{e.file},{e.source},{e.label},{s:.6f}\n")
    return report


def _ci(d: dict[str, Any], pct: bool = True) -> str:
    v, (lo, hi) = d["value"], d["ci95"]
    if v != v:  # NaN
        return "n/a"
    f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3f}")
    return f"{f(v)} ({f(lo)}–{f(hi)})"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (for the model card)."""
    h = report["headline"]
    lines = [f"Model `{report['model']}`, split `{report['split']}`, headline sources "
             f"{', '.join(report['headline_sources'])}: {h['films']} films ({h['abnormal']} abnormal, "
             f"{h['normal']} normal, {h['nodule_or_mass']} with Nodule/Mass).", "",
             f"AUROC {_ci(h['auroc'], pct=False)}", "",
             "| operating point | threshold | sensitivity | specificity = normals called likely normal "
             "| all films likely normal | Nodule/Mass sensitivity |",
             "|---|---|---|---|---|---|"]
    for name, op in h["operating_points"].items():
        lines.append(f"| {name} | {op['threshold']:.4f} | {_ci(op['sensitivity'])} | {_ci(op['specificity'])} | "
                     f"{_ci(op['all_films_likely_normal'])} | {_ci(op['nodule_or_mass_sensitivity'])} |")
    lines += ["", "Per source (AUROC where both classes are present; share of normals called likely normal "
              "at each operating point):", "",
              "| source | films | abnormal | AUROC | " + " | ".join(f"normals likely normal @{k}" for k in h["operating_points"]) + " |",
              "|---|---|---|---|" + "---|" * len(h["operating_points"])]
    for src, f in {**report["by_source"], "NIH normals alone": report["nih_normals_alone"]}.items():
        spec = " | ".join(_ci(op["specificity"]) for op in f["operating_points"].values())
        lines.append(f"| {src} | {f['films']} | {f['abnormal']} | {_ci(f['auroc'], pct=False)} | {spec} |")
    lines += ["", f"Normals of each source against all NIH abnormal {report['split']} films (AUROC; equal values would "
              "mean the source of a normal film does not matter to the model):", ""]
    for src, v in report.get("normals_by_source_vs_nih_abnormal_auroc", {}).items():
        lines.append(f"- {src}: {_ci(v, pct=False)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="test-split figures of an exported model, with 95% CIs")
    ap.add_argument("--model", default=None, help="ONNX file (default: the bundled model)")
    ap.add_argument("--manifest", default=None, help="split CSV (default: model/default_split.csv)")
    ap.add_argument("--data", default=None, help="films' root (default: shared data)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", default=None, help="write the JSON report here")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables instead of JSON")
    args = ap.parse_args(argv)
    from cxr_triage.paths import bundled_model_path, repo_root, shared_data_dir

    report = test_report(args.model or bundled_model_path(),
                         args.manifest or repo_root() / "model" / "default_split.csv",
                         args.data or shared_data_dir(), args.out, args.split)
    if args.markdown:
        print(markdown(report))
    else:
        keys = ("model", "split", "headline", "by_source", "nih_normals_alone", "normals_by_source_vs_nih_abnormal_auroc")
        print(json.dumps({k: report[k] for k in keys}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
