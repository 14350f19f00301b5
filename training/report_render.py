"""The test report as files and text: JSON + HTML + scores CSV (:func:`write_report`), the
terminal summary, Markdown tables (for a model card) and the check lines they share.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxr_triage.evaluation.model_checks import wilson_text
from cxr_triage.training.manifest import Entry


def write_report(rep: dict[str, Any], out: str | Path, entries: Sequence[Entry] | None = None,
                 scores: np.ndarray | None = None, compare: np.ndarray | None = None) -> dict[str, Path]:
    """``out`` (JSON), ``out`` with ``.html`` and, with entries and scores, ``.scores.csv``."""
    out = Path(out)
    if out.suffix != ".json":
        out = out / "test_report.json" if not out.suffix else out.with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=2))
    paths = {"json": out, "html": out.with_suffix(".html")}
    paths["html"].write_text(render_html(rep))
    if entries is not None and scores is not None:
        paths["scores"] = out.with_suffix(".scores.csv")
        with paths["scores"].open("w") as fh:
            fh.write("file,source,view,label,score" + (",score_compared\n" if compare is not None else "\n"))
            for i, (e, sc) in enumerate(zip(entries, scores)):
                extra = f",{compare[i]:.6f}" if compare is not None else ""
                fh.write(f"{e.file},{e.source},{e.view},{e.label},{sc:.6f}{extra}\n")
    return paths


def _ci(d: dict[str, Any] | None, pct: bool = True) -> str:
    if not d or d.get("value") is None:
        return "n/a"
    v, (lo, hi) = d["value"], d["ci95"]
    f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3f}")
    return f"{f(v)} ({f(lo)}-{f(hi)})"


def _rows(rep: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Per source first (the figures that show a model that learned its sources), then the
    pooled headline, labelled as such, then per view and per source x view."""
    rows = [(f"source {k}", v) for k, v in rep["by_source"].items()]
    rows += [(f"pooled ({', '.join(rep['headline_sources'])})", rep["headline"])]
    rows += [(f"view {k}", v) for k, v in rep["by_view"].items()]
    rows += [(k, v) for k, v in rep.get("by_source_view", {}).items()]
    return rows


def terminal_summary(rep: dict[str, Any]) -> str:
    """The report in the terminal: one block per headline/source/view/source x view, the
    operating points under it, then the comparison."""
    lines = [f"test report: model {rep['model']}, split {rep['split']}, thresholds {rep['thresholds_from']}"]
    gate = rep.get("intended_use_gate")
    if gate:
        refused = ", ".join(f"{n} {why}" for why, n in gate["the_gate_would_refuse"].items()) or "none"
        lines.append(f"{gate['why']} (of {gate['films']} films the node would refuse: {refused})")
    for label, f in _rows(rep):
        lines.append(f"{label}: {f['films']} films ({f['abnormal']} abnormal, {f['normal']} normal), "
                     f"AUROC {_ci(f['auroc'], pct=False)}")
        for name, op in f["operating_points"].items():
            lines.append(f"    {name} (t={op['threshold']:.4f}): sensitivity {_ci(op['sensitivity'])}, "
                         f"normals called likely normal {_ci(op['normals_called_likely_normal'])}")
    lines += check_lines(rep)
    cmp_ = rep.get("comparison")
    if cmp_:
        lines.append(f"paired comparison with {cmp_['model_b']} (this model minus it):")
        lines += _comparison_rows(cmp_, _COMPARISON_TEXT, "source ")
        if (cmp_["headline"] or {}).get("verdict"):
            lines.append(f"    verdict: this model is {cmp_['headline']['verdict']}")
        for w in (cmp_["headline"] or {}).get("workload_at_equal_sensitivity", []):
            lines.append(f"    all films called likely normal with each model's threshold re-chosen on these films for "
                         f"sensitivity {w['target_sensitivity']:g}: {w['workload_a']:.1%} vs "
                         f"{w['workload_b']:.1%} (difference {w['difference']:+.1%}, CI {w['low']:+.1%} to {w['high']:+.1%})")
    nod = rep.get("nodule_comparison")
    if nod:
        lines.append("paired nodule/mass comparison (Nodule/Mass films vs normals; this model minus it):")
        lines += _comparison_rows(nod, ("    {label}: n/a (needs Nodule/Mass and normal films)", _COMPARISON_TEXT[1]),
                                  "source ")
    return "\n".join(lines)


#: a paired comparison row as text and as HTML (str.format over the row's figures, ``label``, ``lo``, ``hi``)
_COMPARISON_TEXT = ("    {label}: n/a (needs normal and abnormal films)",
                    "    {label}: AUROC {auroc_a:.3f} vs {auroc_b:.3f}, difference {difference:+.3f} (paired bootstrap "
                    "95% CI {lo:+.3f} to {hi:+.3f}; DeLong p={delong_p_value:.3f}), {films} films")
_COMPARISON_HTML = ("<tr><td class=l>{label}</td><td colspan=5>n/a</td></tr>",
                    "<tr><td class=l>{label}</td><td>{films}</td><td>{auroc_a:.3f}</td><td>{auroc_b:.3f}</td>"
                    "<td>{difference:+.3f} ({lo:+.3f} to {hi:+.3f})</td><td>{delong_p_value:.3f}</td></tr>")


def _comparison_rows(cmp_: dict[str, Any], formats: tuple[str, str], source_prefix: str,
                     escape: Any = str) -> list[str]:
    """The paired comparison's rows (headline, then each source, labelled ``source_prefix`` +
    name and passed through ``escape``) in ``formats`` (n/a row, figures row)."""
    out = []
    for label, c in [("headline", cmp_["headline"]), *((f"{source_prefix}{k}", v) for k, v in cmp_["by_source"].items())]:
        if c is None:
            out.append(formats[0].format(label=escape(label)))
        else:
            lo, hi = c["paired_bootstrap_ci95"]
            out.append(formats[1].format(label=escape(label), lo=lo, hi=hi, **c))
    return out


def check_lines(rep: dict[str, Any]) -> list[str]:
    """The nodule/mass output and the model checks (twins, source probe, pointing game) as text lines."""
    lines = []
    nod = rep.get("nodule")
    if nod:
        for label, f in [("pooled", nod["headline"]), *((f"source {k}", v) for k, v in nod["by_source"].items())]:
            lines.append(f"nodule/mass output, {label}: {f['nodule_or_mass_films']} Nodule/Mass films; AUROC vs "
                         f"{f['normal_films']} normals {_ci(f['auroc_vs_normals'], pct=False)}, vs all "
                         f"{f['other_known_films']} other films {_ci(f['auroc_vs_all_other'], pct=False)}")
            for name, op in f["operating_points"].items():
                lines.append(f"    nodule {name} (t={op['threshold']:.4f}): sensitivity {_ci(op['sensitivity'])}, "
                             f"normals flagged {_ci(op['normals_flagged'])}")
    checks = rep.get("checks", {})
    tw = checks.get("twins")
    if tw and tw.get("pairs"):
        lines.append(f"twin test ({tw['pairs']} pairs, {' vs '.join(tw['sources'])}): mean |score difference| "
                     f"{tw['mean_abs_diff']:.4f} (median {tw['median_abs_diff']:.4f}, max {tw['max_abs_diff']:.4f}), "
                     f"decisions agree on {tw['decision_agreement']:.1%}")
    pr = checks.get("source_probe")
    if pr and "balanced_accuracy" in pr:
        lines.append(f"source probe on normals ({', '.join(f'{k} {v}' for k, v in pr['sources'].items())}): balanced "
                     f"accuracy {pr['balanced_accuracy']:.3f} (chance {pr['chance_balanced_accuracy']:.3f}), macro "
                     f"AUROC {pr['macro_auroc']:.3f} (lower: the features know less about the source)")
    pg = checks.get("pointing_game")
    if pg:
        lines.append(f"heatmap pointing game ({pg['films']} films with boxes): heatmap {wilson_text(pg['heatmap_hit_rate'])}"
                     f" vs fixed guess {wilson_text(pg['fixed_guess_hit_rate'])}, McNemar p {pg['mcnemar_exact_p']}"
                     f"; validated in the model: {rep.get('heatmap_validated_in_model')}")
    return lines


def render_html(rep: dict[str, Any]) -> str:
    """A self-contained HTML page with the report's tables."""
    e = html.escape
    ops = list(rep["headline"]["operating_points"])
    head = "".join(f"<th>sensitivity @{e(o)}</th><th>normals likely normal @{e(o)}</th>" for o in ops)
    body = []
    for label, f in _rows(rep):
        cells = "".join(f"<td>{e(_ci(f['operating_points'][o]['sensitivity']))}</td>"
                        f"<td>{e(_ci(f['operating_points'][o]['normals_called_likely_normal']))}</td>"
                        for o in ops if o in f["operating_points"])
        body.append(f"<tr><td class=l>{e(label)}</td><td>{f['films']}</td><td>{f['abnormal']}</td>"
                    f"<td>{f['normal']}</td><td>{e(_ci(f['auroc'], pct=False))}</td>{cells}</tr>")
    thr = "".join(f"<li>{e(o)}: {rep['headline']['operating_points'][o]['threshold']:.6f}</li>" for o in ops)
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>Test report: {e(rep['model'])}</title><style>body{{font-family:sans-serif;font-size:13px;margin:18px}}"
        "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}"
        "td.l,th.l{text-align:left}th{background:#f2f2f2}.meta{color:#555}</style></head><body>",
        f"<h1>Test report: {e(rep['model'])}</h1>",
        f"<p class=meta>split {e(rep['split'])} of {e(rep['manifest'])}; thresholds {e(rep['thresholds_from'])}; "
        f"headline sources {e(', '.join(rep['headline_sources']))}. AUROC: patient-level bootstrap 95% CI; "
        "proportions: Wilson 95% CI.</p>",
        f"<ul>{thr}</ul>",
        f"<table><tr><th class=l>films</th><th>n</th><th>abnormal</th><th>normal</th><th>AUROC</th>{head}</tr>",
        *body, "</table>",
    ]
    if rep.get("normals_by_source_vs_headline_abnormal_auroc"):
        parts.append("<h2>Normals of each source against all headline abnormal films (AUROC)</h2><ul>")
        parts += [f"<li>{e(k)}: {e(_ci(v, pct=False))}</li>"
                  for k, v in rep["normals_by_source_vs_headline_abnormal_auroc"].items()]
        parts.append("</ul>")
    extra = check_lines(rep)
    if extra:
        parts.append("<h2>Nodule/mass output and model checks</h2><ul>")
        parts += [f"<li>{e(line.strip())}</li>" for line in extra]
        parts.append("</ul>")
    cmp_ = rep.get("comparison")
    if cmp_:
        parts.append(f"<h2>Paired comparison with {e(cmp_['model_b'])}</h2><p class=meta>{e(cmp_['note'])}</p>"
                     "<table><tr><th class=l>films</th><th>n</th><th>AUROC this</th><th>AUROC compared</th>"
                     "<th>difference (paired bootstrap 95% CI)</th><th>DeLong p</th></tr>")
        parts += _comparison_rows(cmp_, _COMPARISON_HTML, "", html.escape)
        parts.append("</table>")
        if (cmp_["headline"] or {}).get("verdict"):
            parts.append(f"<p><b>Verdict:</b> this model is {e(cmp_['headline']['verdict'])}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (for a model card)."""
    h = report["headline"]
    ops_ = list(h["operating_points"])
    lines = [f"Model `{report['model']}`, split `{report['split']}`.", "",
             "Per source (AUROC with 95% CI; at each operating point the sensitivity and the share of that "
             "source's normals called likely normal):", "",
             "| source | films | abnormal | normal | AUROC | "
             + " | ".join(f"sensitivity @{k} | normals likely normal @{k}" for k in ops_) + " |",
             "|---|---|---|---|---|" + "---|---|" * len(ops_)]
    for src, f in report["by_source"].items():
        cells = " | ".join(f"{_ci(f['operating_points'][k]['sensitivity'])} | {_ci(f['operating_points'][k]['specificity'])}"
                           for k in ops_ if k in f["operating_points"])
        lines.append(f"| {src} | {f['films']} | {f['abnormal']} | {f['normal']} | {_ci(f['auroc'], pct=False)} | {cells} |")
    lines += ["", f"Pooled over {', '.join(report['headline_sources'])} (labelled: a pooled figure hides a model that "
              f"learned its sources): {h['films']} films ({h['abnormal']} abnormal, {h['normal']} normal, "
              f"{h['nodule_or_mass']} with Nodule/Mass), AUROC {_ci(h['auroc'], pct=False)}", "",
              "| operating point | threshold | sensitivity | specificity = normals called likely normal "
              "| all films likely normal | Nodule/Mass sensitivity |",
              "|---|---|---|---|---|---|"]
    for name, op in h["operating_points"].items():
        lines.append(f"| {name} | {op['threshold']:.4f} | {_ci(op['sensitivity'])} | {_ci(op['specificity'])} | "
                     f"{_ci(op['all_films_likely_normal'])} | {_ci(op['nodule_or_mass_sensitivity'])} |")
    lines += ["", "Per source and view (AUROC where both classes are present; share of normals called likely "
              "normal at each operating point):", "",
              "| films | n | abnormal | AUROC | " + " | ".join(f"normals likely normal @{k}" for k in h["operating_points"]) + " |",
              "|---|---|---|---|" + "---|" * len(h["operating_points"])]
    rows = {**{f"source {k}": v for k, v in report["by_source"].items()},
            **{f"view {k}": v for k, v in report["by_view"].items()},
            "headline normals alone": report["headline_normals_alone"]}
    for src, f in rows.items():
        spec = " | ".join(_ci(op["specificity"]) for op in f["operating_points"].values())
        lines.append(f"| {src} | {f['films']} | {f['abnormal']} | {_ci(f['auroc'], pct=False)} | {spec} |")
    if report.get("normals_by_source_vs_headline_abnormal_auroc"):
        lines += ["", f"Normals of each source against all headline abnormal {report['split']} films (AUROC; equal "
                  "values would mean the source of a normal film does not matter to the model):", ""]
        for src, v in report["normals_by_source_vs_headline_abnormal_auroc"].items():
            lines.append(f"- {src}: {_ci(v, pct=False)}")
    extra = check_lines(report)
    if extra:
        lines += ["", *[f"- {x.strip()}" for x in extra]]
    return "\n".join(lines) + "\n"
