"""Compare training runs on their VALIDATION split only: which recipe change helped.

For each run folder (``cxr-triage train`` / ``make_default`` output with ``model.pt``): the
checkpoint is exported to ``<run>/model.onnx`` (heatmap checked against the boxes when the
run did not do it), then :func:`cxr_triage.training.report.test_report` is run on the
``val`` split, and one row per run is printed: per-source AUROC and share of normals called
likely normal at the default operating point, nodule/mass AUROC (against normals), the twin
gap, the source probe and the pointing game. Nothing here looks at the test split.

    python -m cxr_triage.training.compare_runs runs/A runs/B --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cxr_triage.training.export import export_checkpoint
from cxr_triage.training.heatmap import heatmap_validation
from cxr_triage.training.manifest import read_manifest
from cxr_triage.training.report import test_report
from cxr_triage.training.train_config import TrainConfig

SOURCES = ("nih-cxr14", "nih-extra", "rsna-pneumonia")


def evaluate_run(run: Path, data: Path, split: str = "val", n_boot: int = 200, force: bool = False) -> dict[str, Any]:
    """``<run>/<split>_report.json`` (made when missing or ``force``)."""
    import torch  # torch only once a run is evaluated

    out = run / f"{split}_report.json"
    if out.exists() and not force:
        return dict(json.loads(out.read_text()))
    boxes = data / "rsna-pneumonia" / "boxes.csv"
    ck = torch.load(run / "model.pt", map_location="cpu", weights_only=False)
    if "heatmap" not in ck and boxes.exists():
        # network imports torch at module level: only when the heatmap is checked here
        from cxr_triage.training.network import build_network

        cfg = TrainConfig(**{k: v for k, v in ck["config"].items() if k in TrainConfig.__dataclass_fields__})
        cfg.boxes_csv, cfg.out = str(boxes), str(run)
        net = build_network(ck["architecture"], pretrained=False, image_size=ck["image_size"],
                            n_outputs=int(ck.get("n_outputs", 1)))
        net.load_state_dict(ck["model"])
        root = Path(ck.get("films_root") or data)
        ck["heatmap"] = heatmap_validation(cfg, read_manifest(run / "split.csv"), root, net, ck, "cpu")
        torch.save(ck, run / "model.pt")
    onnx_path = run / "model.onnx"
    if force or not onnx_path.exists():
        export_checkpoint(run / "model.pt", onnx_path, data_root=Path(ck.get("films_root") or data),
                          check_manifest=run / "split.csv")
    rep = test_report(onnx_path, run / "split.csv", run, out, split, headline_sources=list(SOURCES),
                      n_boot=n_boot, boxes=boxes if boxes.exists() else None)
    return rep


def row(name: str, rep: dict[str, Any], op: str = "sens_0.98") -> dict[str, Any]:
    """The figures of one run that the comparison table shows."""
    r: dict[str, Any] = {"run": name}
    for src in SOURCES:
        f = rep["by_source"].get(src)
        if f:
            r[f"{src} AUROC"] = f["auroc"]["value"]
            o = f["operating_points"].get(op, {})
            r[f"{src} normals LN@{op}"] = (o.get("specificity") or {}).get("value")
            r[f"{src} sens@{op}"] = (o.get("sensitivity") or {}).get("value")
    aucs = [float(r[f"{s} AUROC"]) for s in SOURCES if r.get(f"{s} AUROC") is not None]
    r["mean source AUROC"] = round(sum(aucs) / len(aucs), 4) if aucs else None
    nrm = rep.get("normals_by_source_vs_headline_abnormal_auroc", {}).get("rsna-normals")
    r["rsna-normals vs abnormal AUROC"] = nrm["value"] if nrm else None
    nod = rep.get("nodule", {}).get("headline")
    r["nodule AUROC vs normals"] = nod["auroc_vs_normals"]["value"] if nod else None
    c = rep.get("checks", {})
    tw = c.get("twins", {})
    r["twin mean |d|"] = tw.get("mean_abs_diff")
    r["twin agreement"] = tw.get("decision_agreement")
    pr = c.get("source_probe", {})
    r["probe bal. acc."] = pr.get("balanced_accuracy")
    pg = c.get("pointing_game", {})
    r["pointing hm/guess"] = (f"{pg['heatmap_hit_rate']['value']}/{pg['fixed_guess_hit_rate']['value']}"
                              if pg else None)
    return r


def markdown_table(rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join("" if r.get(c) is None else (f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]))
                                     for c in cols) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders")
    ap.add_argument("--data", default="../shared/data", help="the shared data folder (boxes)")
    ap.add_argument("--split", default="val", choices=["val"], help="only validation: runs are chosen on it")
    ap.add_argument("--force", action="store_true", help="re-export and re-report")
    ap.add_argument("--n-boot", type=int, default=200)
    args = ap.parse_args(argv)
    rows = []
    for run in args.runs:
        p = Path(run)
        if not (p / "model.pt").exists():
            print(f"{run}: no model.pt yet, skipped", file=sys.stderr)
            continue
        rows.append(row(p.name, evaluate_run(p, Path(args.data).resolve(), args.split, args.n_boot, args.force)))
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
