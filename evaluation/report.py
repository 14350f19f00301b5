"""Write an evaluation as JSON and as one self-contained HTML page (plots embedded as PNG).

Rendered from the report dict alone (analysis.evaluate), so the HTML never disagrees with the
JSON it sits beside.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from cxr_triage.contract.files import json_safe

_OP_COLOURS = ("#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#17becf")


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _assessed(report: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    rows = [f for f in report["films"] if f["score"] is not None and f["decision"] != "not_assessable"]
    return (np.array([f["label"] for f in rows], dtype=int), np.array([f["score"] for f in rows], dtype=float))


def plots(report: dict[str, Any]) -> dict[str, str]:
    """Base64 PNGs: ROC with operating points, score distributions by class, reliability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    y, s = _assessed(report)
    out: dict[str, str] = {}
    ops = report["operating_points"]
    if len(y) and 0 < y.sum() < len(y):
        fpr, tpr, _ = roc_curve(y, s)
        fig, ax = plt.subplots(figsize=(4.6, 4.3))
        auc = report["auroc"]["delong"] if report.get("auroc") else None
        label = f"AUROC {auc['value']:.3f} ({auc['low']:.3f}-{auc['high']:.3f})" if auc else "ROC"
        ax.plot(fpr, tpr, color="#1f77b4", lw=1.8, label=label)
        ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
        for op, colour in zip(ops, _OP_COLOURS):
            sens, spec = op["sensitivity"], op["specificity"]
            if sens["value"] is None or spec["value"] is None:
                continue
            x = 1 - spec["value"]
            ax.errorbar(x, sens["value"],
                        yerr=[[sens["value"] - sens["low"]], [sens["high"] - sens["value"]]],
                        xerr=[[spec["high"] - spec["value"]], [spec["value"] - spec["low"]]],
                        fmt="o", color=colour, ms=5, capsize=2,
                        label=f"{op['name']} (t={op['threshold']:.3g})" + (" *" if op.get("primary") else ""))
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.legend(loc="lower right", fontsize=7)
        ax.set_title("Pooled ROC and operating points (95% CI)", fontsize=9)
        out["roc"] = _png(fig)
    if len(y):
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
        # bins over the scores' own range: calibrated scores can crowd a narrow band
        lo, hi = float(min(s.min(), *(op["threshold"] for op in ops))), float(max(s.max(), *(op["threshold"] for op in ops)))
        pad = max((hi - lo) * 0.05, 0.005)
        bins = np.linspace(max(0.0, lo - pad), min(1.0, hi + pad), 41)
        for cls, name, colour in ((0, "normal", "#2ca02c"), (1, "abnormal", "#d62728")):
            if np.any(y == cls):
                ax.hist(s[y == cls], bins=bins.tolist(), alpha=0.55, color=colour, label=f"{name} (n={int(np.sum(y == cls))})")
        for op, colour in zip(ops, _OP_COLOURS):
            ax.axvline(op["threshold"], color=colour, lw=1, ls="--")
        ax.set_xlim(bins[0], bins[-1])
        ax.set_xlabel("score (calibrated P(abnormal))")
        ax.set_ylabel("films")
        ax.legend(fontsize=7)
        ax.set_title("Pooled score distribution by class (dashed: thresholds)", fontsize=9)
        out["distributions"] = _png(fig)
    cal = report.get("calibration")
    if cal:
        fig, ax = plt.subplots(figsize=(4.2, 4.0))
        ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
        pts = [b for b in cal["bins"] if b["n"]]
        xs = [b["mean_score"] for b in pts]
        ys = [b["observed"]["value"] for b in pts]
        err = [[v - b["observed"]["low"] for v, b in zip(ys, pts)], [b["observed"]["high"] - v for v, b in zip(ys, pts)]]
        ax.errorbar(xs, ys, yerr=err, fmt="o-", color="#1f77b4", ms=4, capsize=2)
        for x, v, b in zip(xs, ys, pts):
            ax.annotate(str(b["n"]), (x, v), fontsize=6, xytext=(3, -8), textcoords="offset points")
        ax.set_xlabel("mean score in bin")
        ax.set_ylabel("observed abnormal rate")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"Reliability (ECE {cal['ece']:.3f}; n per bin)", fontsize=9)
        out["reliability"] = _png(fig)
    return out


def _pct(p: dict[str, Any] | None) -> str:
    if not p or p.get("value") is None:
        return "n/a"
    return f"{100 * p['value']:.1f}% ({100 * p['low']:.1f}-{100 * p['high']:.1f}) [{p['k']}/{p['n']}]"


def _num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}f}"


def _ci(p: dict[str, Any] | None) -> str:
    """A proportion or AUROC dict as ``0.950 (0.870-0.980)`` plus ``[k/n]`` for a proportion."""
    if not p or p.get("value") is None:
        return "n/a" + (f" [0/{p['n']}]" if p and "n" in p else "")
    text = f"{p['value']:.3f}"
    if p.get("low") is not None and p.get("high") is not None:
        text += f" ({p['low']:.3f}-{p['high']:.3f})"
    return text + (f" [{p['k']}/{p['n']}]" if "k" in p else "")


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The report for a terminal, per source first, then the pooled figures labelled as such.

    One line per source (films, classes, AUROC with its patient-bootstrap 95% CI) and under it
    one line per stored operating point (sensitivity and normals called likely normal, Wilson
    95% CI, [k/n]); then the pooled line (AUROC with DeLong 95% CI) and the pooled operating
    points (sensitivity, specificity, workload saved = all films called likely normal, missed)."""
    lines: list[str] = []
    by_source = report.get("by_source") or {}
    if by_source:
        lines.append("per source (headline: a pooled figure hides a model that learned which source a film came from):")
    for src, f in by_source.items():
        auc = _ci(f["auroc"]) if f.get("auroc") else "n/a (" + (
            "normal films only" if not f["abnormal"] else "abnormal films only" if not f["normal"] else
            "one class assessed") + ")"
        lines.append(f"  {src}: {f['films']} films ({f['abnormal']} abnormal, {f['normal']} normal, "
                     f"{f['assessed']} assessed), AUROC {auc}")
        for name, op in f["operating_points"].items():
            lines.append(f"      {name}{' *' if op['primary'] else ''} t={op['threshold']:.4f}: sensitivity "
                         f"{_ci(op['sensitivity'])}, normals called likely normal "
                         f"{_ci(op['normals_called_likely_normal'])}")
    c = report["counts"]
    label = (report.get("pooled") or {}).get("label", "pooled")
    line = (f"{label}: {c['films']} films ({c['abnormal']} abnormal, {c['normal']} normal), not assessable "
            f"{c['not_assessable']['normal'] + c['not_assessable']['abnormal']}")
    if report.get("auroc"):
        a = report["auroc"]["delong"]
        line += f", pooled AUROC {a['value']:.3f} (95% CI {a['low']:.3f}-{a['high']:.3f}, DeLong)"
    lines.append(line)
    for op in report["operating_points"]:
        lines.append(f"      pooled {op['name']}{' *' if op['primary'] else ''} t={op['threshold']:.4f}: sensitivity "
                     f"{_ci(op['sensitivity'])}, specificity {_ci(op['specificity'])}, workload saved "
                     f"{_ci(op['workload_all'])}, missed {op['fn']}")
    return lines


def render_html(report: dict[str, Any]) -> str:
    """The report as one HTML string with no external resources."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("cxr_triage.evaluation", "templates"),
                      autoescape=select_autoescape(["html"]))
    env.filters["pct"] = _pct
    env.filters["num"] = _num
    return env.get_template("report.html").render(r=report, img=plots(report))


def write_report(report: dict[str, Any], out_dir: Path, stem: str = "report") -> dict[str, Path]:
    """``<stem>.json`` and ``<stem>.html`` in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = json_safe(report)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(clean, indent=1))
    html_path = out_dir / f"{stem}.html"
    html_path.write_text(render_html(clean))
    return {"json": json_path, "html": html_path}


def screenshot(html_path: Path, png_path: Path, width: int = 1200, height: int = 1500, timeout_s: float = 90) -> Path:
    """An image of the report's first page with headless chromium (for notes and tickets)."""
    import shutil
    import subprocess
    import tempfile

    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if exe is None:
        raise FileNotFoundError("no chromium found for the screenshot")
    png_path = Path(png_path).resolve()
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", f"--screenshot={png_path}", Path(html_path).resolve().as_uri()],
            check=True, capture_output=True, timeout=timeout_s,
        )
    return png_path
