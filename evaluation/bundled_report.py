"""`make evaluate`: the report for the bundled model on the held-out test split of ../shared/data.

The split is the one the model was trained with (``model/default_split.csv``, patient-level);
the thresholds are the model's own, chosen by its trainer on the validation split, and the
report checks (by content hash) that none of the validation films is among the reported ones.

The test split's sources: nih-cxr14 and nih-extra (NIH films, both classes), rsna-pneumonia
(NIH films re-read by radiologists, both classes through one pipeline) and rsna-normals (normal
films only, 224 px from another resizing pipeline: a model can separate them for the wrong
reason, shared/data README). Every report and the terminal lead with per-source figures (AUROC
with 95% CI; at each stored operating point sensitivity and the share of that source's normals
called likely normal); the pooled figures follow, labelled as pooled.

Two reports: ``report`` (all test films) and ``report_nih`` (every source but rsna-normals: the
NIH films, each source with both classes, so its pooled figures hold no normals-only source),
each as JSON and HTML, plus a screenshot of each report's first page when chromium is installed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from cxr_triage.evaluation import analysis, report, sources, thresholds
from cxr_triage.evaluation.report import summary_lines
from cxr_triage.evaluation.sources import film_key, read_manifest
from cxr_triage.paths import bundled_model_path, repo_root, shared_data_dir

DEFAULT_SPLIT = repo_root() / "model" / "default_split.csv"
RSNA = "rsna-normals"


def split_films(split_csv: Path, data: Path, split: str) -> list[Any]:
    """Films of one split, keyed by content hash; ``source`` is the data source."""
    films = [f for f in read_manifest(split_csv, data, hash_files=False) if f.extra.get("split") == split]
    for f in films:
        f.key = film_key(f.path, f.file)
        f.source = f.source or f.extra.get("source", "")
    return films


def _limit(films: Sequence[Any], n: int) -> list[Any]:
    """The first n films, half of each class where possible (for quick runs and tests)."""
    abn = [f for f in films if f.label == 1][: (n + 1) // 2]
    nor = [f for f in films if f.label == 0][: n - len(abn)]
    return abn + nor


def make_reports(data: Path, out: Path, model: Path, split_csv: Path = DEFAULT_SPLIT, n_boot: int = 2000,
                 limit: int | None = None, screenshot: bool = True, cfg: Any = None) -> dict[str, Path]:
    """Score the test split, write report(.json/.html) and report_nih(.json/.html); returns paths."""
    if not split_csv.is_file():
        raise FileNotFoundError(f"{split_csv} not found: it is committed with the shipped model (`make train`)")
    if not model.is_file():
        raise FileNotFoundError(f"model {model} not found: train it with `make train` or pass --model")
    test = split_films(split_csv, data, "test")
    val = split_films(split_csv, data, "val")
    if limit:
        test = _limit(test, limit)
    info = sources.model_info(model)
    meta = info["metadata"]
    ts = thresholds.from_model_metadata(
        meta, chosen_on=f"the validation split of {split_csv.name} ({len(val)} films)",
        chosen_on_keys=[f.key for f in val])
    scored = sources.scores_from_model(test, model, cfg)
    inputs = {"manifest": f"{split_csv.name}: split=test of {data}", "source": {"kind": "model", "path": str(model)},
              "model": {k: info[k] for k in ("path", "sha256", "name", "version")}}
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    nih = [i for i, f in enumerate(test) if f.source != RSNA]
    for stem, idx, title in (
        ("report", list(range(len(test))), f"{meta.name} {meta.version}: held-out test split (all sources)"),
        ("report_nih", nih, f"{meta.name} {meta.version}: held-out test split without {RSNA} (sources with both classes)"),
    ):
        if not idx:
            continue
        rep = analysis.evaluate([test[i] for i in idx], [scored[i] for i in idx], ts, title=title,
                                reported_name=f"the test split of {split_csv.name}", inputs=inputs, n_boot=n_boot)
        rep["notes"].append(f"sources are the data sets; {RSNA} holds normal films only, 224 px films from another "
                            "resizing pipeline: see the per-source figures, and report_nih for the pooled figures "
                            f"without {RSNA}")
        written = report.write_report(rep, out, stem)
        paths[f"{stem}_json"], paths[f"{stem}_html"] = written["json"], written["html"]
        _print(stem, rep)
    sources.write_scores_csv(test, scored, out / "test_scores.csv")
    if screenshot:
        try:
            paths["first_page"] = report.screenshot(paths["report_html"], out / "report_first_page.png")
            if "report_nih_html" in paths:
                paths["nih_first_page"] = report.screenshot(paths["report_nih_html"], out / "report_nih_first_page.png")
        except (OSError, FileNotFoundError, RuntimeError) as exc:
            print(f"screenshot skipped: {exc}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - chromium failing must not lose the report
            print(f"screenshot failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return paths


def _print(stem: str, rep: dict[str, Any]) -> None:
    """Per source first, then the pooled figures labelled as pooled (report.summary_lines)."""
    print(f"{stem}: {rep['title']}")
    for line in summary_lines(rep):
        print(f"  {line}")
    for w in rep["warnings"]:
        print(f"  WARNING: {w}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="shared data folder (default ../shared/data)")
    ap.add_argument("--out", type=Path, default=Path("runs/report"))
    ap.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    ap.add_argument("--split", type=Path, default=DEFAULT_SPLIT)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--limit", type=int, default=None, help="only this many test films (quick check)")
    ap.add_argument("--no-screenshot", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("cxr_triage.inference").setLevel(logging.WARNING)
    data = (args.data or shared_data_dir()).resolve()
    try:
        paths = make_reports(data, args.out, args.model or bundled_model_path(), args.split, args.n_boot,
                             args.limit, not args.no_screenshot)
    except FileNotFoundError as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
