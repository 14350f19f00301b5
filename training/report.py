"""``cxr-triage report``: the test report of a model on a manifest's own films, with 95% CIs.

Scores the ONNX file with ONNX Runtime exactly as the worker does (reader -> preprocess with
the spec stored in the model -> ``score``), at the thresholds stored in the model (chosen on
the validation split; nothing here is tuned), plus a commissioned site threshold when given.

The headline is the manifest's own sources (every source in the split, or the ones named by
``headline_sources``); then one block per source, per view and per source x view: AUROC,
and at each operating point the sensitivity and the share of normal films called likely
normal. A model that learned the source instead of the lungs shows it here (one source's
normals all suspicious), as does one that learned "AP = abnormal" (per view).

With ``compare`` (a second ONNX model) the same films are scored by both and compared paired:
AUROC difference with a patient-level paired bootstrap CI (and DeLong), overall and per
source, and the share of films called likely normal at equal sensitivity.

Statistics are :mod:`cxr_triage.evaluation.metrics`: AUROC with a patient-level bootstrap
percentile interval (2,000 resamples; each film its own patient without ``patient_id``),
proportions with Wilson intervals. Output: JSON (the numbers), HTML (the same as tables),
``<stem>.scores.csv`` (file, source, view, label, score[, score of the compared model]) and a
terminal summary.

    cxr-triage report --model site1.onnx --manifest runs/site1/split.csv --out runs/site1/report
    cxr-triage report --model site1.onnx --manifest runs/site1/split.csv --compare bundled.onnx
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxr_triage.contract.decision import decide_many
from cxr_triage.evaluation import metrics
from cxr_triage.training.manifest import Entry, read_manifest, resolve

SCHEMA = "cxr-triage-test-report/2"
MAX_NAMED = 5


class ReportError(ValueError):
    """The report cannot be made as asked (missing films, no films in the split, ...)."""


# ---------------------------------------------------------------- scoring

def _session(model_path: str | Path, threads: int = 2):  # -> (InferenceSession, ModelMetadata)
    import onnxruntime as ort

    from cxr_triage.contract.model_file import METADATA_KEY, ModelMetadata

    path = Path(model_path)
    if not path.is_file():
        raise ReportError(f"model file not found: {path}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for a bad file
        raise ReportError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from None
    props = sess.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ReportError(f"{path}: no {METADATA_KEY!r} metadata: not a cxr-triage model")
    return sess, ModelMetadata.from_json(props[METADATA_KEY])


def model_identity(model_path: str | Path) -> dict[str, Any]:
    """name, version, thresholds and default operating point of an ONNX model file."""
    from cxr_triage.contract.files import file_sha256

    _, meta = _session(model_path, threads=1)
    return {"path": str(model_path), "name": meta.name, "version": meta.version,
            "sha256": file_sha256(model_path), "thresholds": dict(meta.thresholds),
            "default_operating_point": meta.default_operating_point}


def score_films(model_path: str | Path, paths: Sequence[Path], batch: int = 32, threads: int = 2) -> np.ndarray:
    """(N,) calibrated scores from the ONNX file (ONNX Runtime), preprocessing from its metadata.

    Raises ReportError naming the films that cannot be read (the first few, then a count)."""
    from cxr_triage.contract.model_file import INPUT_NAME, SCORE_OUTPUT
    from cxr_triage.contract.preprocessing import preprocess
    from cxr_triage.training.dataset import read_pixels

    sess, meta = _session(model_path, threads)
    out, bad = [], []
    for i in range(0, len(paths), batch):
        xs: list[np.ndarray | None] = []
        for p in paths[i:i + batch]:
            try:
                xs.append(preprocess(read_pixels(p), meta.preprocessing))
            except Exception as exc:  # noqa: BLE001 - one unreadable film is reported, not a traceback
                bad.append(f"{p.name} ({type(exc).__name__})")
                xs.append(None)
        good = [x for x in xs if x is not None]
        if bad:
            continue
        out.append(sess.run([SCORE_OUTPUT], {INPUT_NAME: np.stack(good)})[0])
    if bad:
        raise ReportError(_named(f"{len(bad)} film(s) could not be read", bad))
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def model_outputs(model_path: str | Path, paths: Sequence[Path], batch: int = 32,
                  threads: int = 2) -> dict[str, np.ndarray]:
    """One ONNX Runtime pass over the films: ``score`` (N,), ``nodule_score`` (N,) when the
    model has that output, ``heatmap`` (N, h, w) and ``features`` (N, C) (the pooled last
    feature map, :func:`cxr_triage.evaluation.model_checks.onnx_feature_model`).

    Raises ReportError naming the films that cannot be read."""
    import onnxruntime as ort

    from cxr_triage.contract.model_file import INPUT_NAME
    from cxr_triage.contract.preprocessing import preprocess
    from cxr_triage.evaluation.model_checks import onnx_feature_model
    from cxr_triage.training.dataset import read_pixels

    _, meta = _session(model_path, threads=1)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(onnx_feature_model(model_path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    bad = []
    for i in range(0, len(paths), batch):
        xs = []
        for p in paths[i:i + batch]:
            try:
                xs.append(preprocess(read_pixels(p), meta.preprocessing))
            except Exception as exc:  # noqa: BLE001 - one unreadable film is reported, not a traceback
                bad.append(f"{p.name} ({type(exc).__name__})")
        if bad:
            continue
        for n, v in zip(names, sess.run(names, {INPUT_NAME: np.stack(xs)})):
            out[n].append(np.asarray(v))
    if bad:
        raise ReportError(_named(f"{len(bad)} film(s) could not be read", bad))
    return {n: (np.concatenate(v) if v else np.zeros(0)).astype(np.float64) for n, v in out.items()}


def _named(head: str, items: Sequence[str]) -> str:
    more = f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else ""
    return f"{head}: {', '.join(items[:MAX_NAMED])}{more}"


def check_films(entries: Sequence[Entry], root: Path) -> None:
    """ReportError naming the films that are not found under ``root`` (first few, then a count)."""
    missing = [e.file for e in entries if not resolve(e, root).is_file()]
    if missing:
        raise ReportError(_named(f"{len(missing)} of {len(entries)} film(s) not found under {root} "
                                 "(wrong --data-root?)", missing))


# ---------------------------------------------------------------- figures

def _p(prop: metrics.Proportion) -> dict[str, Any]:
    v = None if math.isnan(prop.value) else round(prop.value, 4)
    ci = [None, None] if math.isnan(prop.value) else [round(prop.low, 4), round(prop.high, 4)]
    return {"value": v, "ci95": ci, "k": prop.k, "n": prop.n}


def _auroc(y: np.ndarray, s: np.ndarray, groups: Sequence[str], n_boot: int, seed: int) -> dict[str, Any]:
    if y.size == 0 or y.min() == y.max():
        return {"value": None, "ci95": [None, None], "method": "needs normal and abnormal films"}
    auc = metrics.auroc_bootstrap(y, s, groups, n_boot=n_boot, seed=seed)
    return {"value": round(auc.value, 4), "ci95": [round(auc.low, 4), round(auc.high, 4)], "method": auc.method}


def figures(scores: np.ndarray, entries: Sequence[Entry], thresholds: dict[str, float],
            n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Counts, AUROC (patient bootstrap CI) and per operating point: sensitivity, share of
    normals called likely normal (= specificity), share of all films called likely normal and
    Nodule/Mass sensitivity, each with a Wilson CI. ``scores`` (N,) in entry order."""
    y = np.array([e.label for e in entries], dtype=int)
    s = np.asarray(scores, dtype=np.float64)
    nodule = np.array([bool(e.nodule_or_mass) and e.label == 1 for e in entries], dtype=bool)
    groups = [e.patient_id or e.file for e in entries]
    res: dict[str, Any] = {"films": len(entries), "abnormal": int(y.sum()), "normal": int((1 - y).sum()),
                           "patients": len(set(groups)), "nodule_or_mass": int(nodule.sum()),
                           "auroc": _auroc(y, s, groups, n_boot, seed)}
    ops = {}
    for name, t in sorted(thresholds.items()):
        flagged = decide_many(s, t) if len(s) else np.zeros(0, dtype=bool)
        likely_normal = metrics.proportion(int((~flagged[y == 0]).sum()), int((y == 0).sum()))
        ops[name] = {
            "threshold": float(t),
            "sensitivity": _p(metrics.proportion(int(flagged[y == 1].sum()), int((y == 1).sum()))),
            "normals_called_likely_normal": _p(likely_normal),
            "specificity": _p(likely_normal),
            "all_films_likely_normal": _p(metrics.proportion(int((~flagged).sum()), len(y))),
            "nodule_or_mass_sensitivity": _p(metrics.proportion(int(flagged[nodule].sum()), int(nodule.sum()))),
        }
    res["operating_points"] = ops
    return res


def nodule_figures(nodule_scores: np.ndarray, entries: Sequence[Entry], thresholds: dict[str, float],
                   n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The nodule/mass output on films whose nodule/mass status is known: AUROC of
    Nodule/Mass films against normal films (the lung-cancer question) and against every other
    known film, and at each nodule/mass operating point its sensitivity on Nodule/Mass films
    and the share of normal films it flags."""
    from cxr_triage.training.targets import nodule_known, nodule_truth

    s = np.asarray(nodule_scores, dtype=np.float64)
    known = nodule_known(entries)
    truth = nodule_truth(entries).astype(bool)
    label = np.array([e.label for e in entries])
    pos = known & truth
    normal = known & (label == 0)
    other = known & ~truth
    groups = [e.patient_id or e.file for e in entries]

    def auc(neg: np.ndarray) -> dict[str, Any]:
        idx = np.flatnonzero(pos | neg)
        return _auroc(truth[idx].astype(int), s[idx], [groups[i] for i in idx], n_boot, seed)

    res: dict[str, Any] = {"nodule_or_mass_films": int(pos.sum()), "normal_films": int(normal.sum()),
                           "other_known_films": int(other.sum()),
                           "auroc_vs_normals": auc(normal), "auroc_vs_all_other": auc(other)}
    res["operating_points"] = {
        name: {"threshold": float(t),
               "sensitivity": _p(metrics.proportion(int(decide_many(s[pos], t).sum()), int(pos.sum()))),
               "normals_flagged": _p(metrics.proportion(int(decide_many(s[normal], t).sum()), int(normal.sum())))}
        for name, t in sorted(thresholds.items())}
    return res


def twin_pairs(entries: Sequence[Entry], root: Path) -> list[tuple[int, int]]:
    """Index pairs (a, b) of films whose ``twin`` column (a path like ``file``) names the
    other (both in ``entries``)."""
    where = {str(resolve(e, root).resolve()): i for i, e in enumerate(entries)}
    pairs = []
    for i, e in enumerate(entries):
        twin = e.extra.get("twin", "")
        j = where.get(str((root / twin).resolve())) if twin else None
        if j is not None and i < j:
            pairs.append((i, j))
    return pairs


def model_checks(outputs: dict[str, np.ndarray], entries: Sequence[Entry], root: Path, threshold: float,
                 boxes: dict[str, list[Any]] | None = None, guess: Sequence[float] | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """Twin test, source probe and (with ``boxes``) pointing game of one model on these films
    (:mod:`cxr_triage.evaluation.model_checks`)."""
    from cxr_triage.evaluation import model_checks as mc

    out: dict[str, Any] = {}
    pairs = twin_pairs(entries, root)
    if pairs:
        a, b = zip(*pairs)
        first = {entries[i].source for i in a}
        out["twins"] = {**mc.twin_agreement(outputs["score"][list(a)], outputs["score"][list(b)], threshold),
                        "sources": sorted(first | {entries[i].source for i in b})}
    normals = [i for i, e in enumerate(entries) if e.label == 0]
    srcs = [entries[i].source or "unknown" for i in normals]
    if len(set(srcs)) > 1 and "features" in outputs:
        out["source_probe"] = mc.source_probe(outputs["features"][normals], srcs, seed=seed)
    if boxes:
        keys = [str(resolve(e, root).resolve()) for e in entries]
        idx, film_boxes = mc.boxes_for(keys, boxes)
        if idx and "heatmap" in outputs:
            from PIL import Image

            sides = []
            for i in idx:
                with Image.open(resolve(entries[i], root)) as im:
                    sides.append(float(max(im.size)))
            if guess is None:  # no guess stored in the model: the best point for these films (favours the guess)
                guess = mc.best_fixed_point(mc.box_prior(film_boxes, sides, outputs["heatmap"].shape[1]))
            out["pointing_game"] = mc.pointing_game(outputs["heatmap"][idx], film_boxes, sides,
                                                    (float(guess[0]), float(guess[1])))
    return out


def _groups(entries: Sequence[Entry], key: Any) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        out.setdefault(key(e), []).append(i)
    return dict(sorted(out.items()))


def _view(e: Entry) -> str:
    return (e.view or "unknown").upper()


def build_report(scores: np.ndarray, entries: Sequence[Entry], thresholds: dict[str, float], *, model: str,
                 split: str, manifest: str, headline_sources: Sequence[str] | None = None,
                 compare: np.ndarray | None = None, compare_model: str = "",
                 compare_thresholds: dict[str, float] | None = None, n_boot: int = 2000,
                 seed: int = 0) -> dict[str, Any]:
    """Every number of the test report as a dict (the JSON; HTML and terminal are made from it).

    ``scores`` (N,) and ``compare`` (N,) are in ``entries`` order; ``headline_sources``
    default: every source of ``entries``."""
    entries = list(entries)
    s = np.asarray(scores, dtype=np.float64)
    sources = sorted({e.source or "unknown" for e in entries})
    head_src = list(headline_sources) if headline_sources else sources
    head = [i for i, e in enumerate(entries) if (e.source or "unknown") in head_src]
    if not head:
        raise ReportError(f"no {split} films from the headline source(s) {', '.join(head_src)} "
                          f"(the split has {', '.join(sources)})")

    def fig(idx: Sequence[int], sc: np.ndarray = s, thr: dict[str, float] = thresholds) -> dict[str, Any]:
        return figures(sc[list(idx)], [entries[i] for i in idx], thr, n_boot, seed)

    rep: dict[str, Any] = {
        "schema": SCHEMA, "model": model, "split": split, "manifest": manifest,
        "thresholds_from": "stored in the model (chosen on its validation split)"
                           + ("; site threshold from its commissioning file" if any(k.startswith("site:") for k in thresholds) else ""),
        "headline_sources": head_src, "sources": sources,
        "headline": fig(head),
        "by_source": {src: fig(idx) for src, idx in _groups(entries, lambda e: e.source or "unknown").items()},
        "by_source_view": {},
    }
    # per view over the headline films (indices of the headline list mapped back)
    rep["by_view"] = {v: fig([head[j] for j in idx]) for v, idx in _groups([entries[i] for i in head], _view).items()}
    if len(sources) > 1:
        rep["by_source_view"] = {key: fig(idx) for key, idx in
                                 _groups(entries, lambda e: f"{e.source or 'unknown'} / {_view(e)}").items()}
    # Each source's normals against all headline abnormal films: equal values mean the model
    # tells normal from abnormal whatever pipeline made the normal film; a low value for one
    # source means its normals look "abnormal" to the model (the source was learned).
    y = np.array([e.label for e in entries])
    abn = [i for i in head if y[i] == 1]
    rep["normals_by_source_vs_headline_abnormal_auroc"] = {}
    for src in sources:
        norm = [i for i, e in enumerate(entries) if (e.source or "unknown") == src and e.label == 0]
        if norm and abn and len(sources) > 1:
            idx = abn + norm
            rep["normals_by_source_vs_headline_abnormal_auroc"][src] = _auroc(
                y[idx], s[idx], [entries[i].patient_id or entries[i].file for i in idx], n_boot, seed)
    rep["headline_normals_alone"] = fig([i for i in head if y[i] == 0])
    if compare is not None:
        rep["comparison"] = _comparison(entries, s, np.asarray(compare, dtype=np.float64), head, compare_model,
                                        compare_thresholds or {}, n_boot, seed)
    return rep


def _comparison(entries: list[Entry], a: np.ndarray, b: np.ndarray, head: list[int], name_b: str,
                thresholds_b: dict[str, float], n_boot: int, seed: int) -> dict[str, Any]:
    """Paired comparison on the same films: this model (a) minus the compared one (b)."""
    y = np.array([e.label for e in entries], dtype=int)
    groups = [e.patient_id or e.file for e in entries]

    def paired(idx: Sequence[int], targets: Sequence[float]) -> dict[str, Any] | None:
        idx = list(idx)
        yy = y[idx]
        if yy.size == 0 or yy.min() == yy.max():
            return None
        out = metrics.compare_models(yy, a[idx], b[idx], [groups[i] for i in idx], targets=targets,
                                     n_boot=n_boot, seed=seed)
        boot = out["auroc_bootstrap"]
        return {"films": len(idx), "auroc_a": round(out["auroc_delong"]["auroc_a"], 4),
                "auroc_b": round(out["auroc_delong"]["auroc_b"], 4),
                "difference": round(boot["difference"], 4),
                "paired_bootstrap_ci95": [round(boot["low"], 4), round(boot["high"], 4)],
                "delong_p_value": round(out["auroc_delong"]["p_value"], 4),
                "workload_at_equal_sensitivity": out["workload_at_equal_sensitivity"]}

    return {
        "model_b": name_b,
        "note": "difference = this model minus the compared model, on the same films; CI: patient-level "
                "paired bootstrap; workload = share of films called likely normal with each model's "
                "threshold set to reach the target sensitivity on these films",
        "headline": paired(head, (0.95, 0.98, 0.99)),
        "by_source": {src: paired(idx, ()) for src, idx in _groups(entries, lambda e: e.source or "unknown").items()},
        "model_b_headline": figures(b[head], [entries[i] for i in head], thresholds_b, n_boot, seed),
        "model_b_by_source": {src: figures(b[idx], [entries[i] for i in idx], thresholds_b, n_boot, seed)
                              for src, idx in _groups(entries, lambda e: e.source or "unknown").items()},
    }


# ---------------------------------------------------------------- the whole report

def test_report(model_path: str | Path, manifest: str | Path, data_root: str | Path | None = None,
                out: str | Path | None = None, split: str = "test", *,
                headline_sources: Sequence[str] | None = None, compare: str | Path | None = None,
                site_threshold: str | Path | None = None, n_boot: int = 2000, seed: int = 0,
                boxes: str | Path | None = None) -> dict[str, Any]:
    """Score ``split`` of ``manifest`` (``"all"``: every film) with the model (and ``compare``)
    and return :func:`build_report`'s dict; written to ``out`` (JSON path: HTML and scores CSV
    beside it) when given. ``data_root`` default: the manifest's folder. The report adds the
    nodule/mass output's figures (when the model has one) and the model checks
    (:func:`model_checks`: twins, source probe, and the heatmap's pointing game when ``boxes``
    is given, a ``file,x,y,width,height`` CSV, files relative to its own folder).

    Raises ReportError (missing or unreadable films named, empty split, bad model file) and
    ManifestError (bad manifest)."""
    manifest = Path(manifest)
    root = Path(data_root) if data_root else manifest.resolve().parent
    rows = read_manifest(manifest)
    entries = [e for e in rows if split == "all" or e.split == split]
    if not entries:
        splits = sorted({e.split or "(none)" for e in rows})
        raise ReportError(f"{manifest}: no films in split {split!r} (its splits: {', '.join(splits)}; "
                          "give --split, or --split all for every film)")
    check_films(entries, root)
    ident = model_identity(model_path)
    thresholds = dict(ident["thresholds"])
    if site_threshold:
        from cxr_triage.inference.site_threshold import check_matches_model

        site = check_matches_model(site_threshold, model_path)
        thresholds[site.operating_point] = float(site.threshold)
    paths = [resolve(e, root) for e in entries]
    outputs = model_outputs(model_path, paths)
    scores = outputs["score"]
    b = ident_b = None
    out_b: dict[str, np.ndarray] = {}
    if compare:
        ident_b = model_identity(compare)
        out_b = model_outputs(compare, paths)
        b = out_b["score"]
    rep = build_report(scores, entries, thresholds, model=f"{ident['name']} {ident['version']}", split=split,
                       manifest=str(manifest), headline_sources=headline_sources, compare=b,
                       compare_model=f"{ident_b['name']} {ident_b['version']} ({compare})" if ident_b else "",
                       compare_thresholds=ident_b["thresholds"] if ident_b else None, n_boot=n_boot, seed=seed)
    rep["model_file"] = {k: ident[k] for k in ("path", "sha256", "name", "version")}
    _, meta = _session(model_path, threads=1)
    box_map = None
    if boxes:
        from cxr_triage.evaluation.model_checks import read_boxes

        box_map = read_boxes(boxes)
    default_t = thresholds.get(meta.default_operating_point, next(iter(thresholds.values()), 0.5))
    guess = (meta.extra.get("heatmap") or {}).get("guess_point")
    if "nodule_score" in outputs:
        rep["nodule"] = _nodule_block(outputs["nodule_score"], entries, dict(meta.nodule_thresholds),
                                      rep["headline_sources"], n_boot, seed)
    rep["checks"] = model_checks(outputs, entries, root, default_t, box_map, guess, seed)
    rep["heatmap_validated_in_model"] = bool(meta.heatmap_validated)
    if ident_b:
        rep["compare_model_file"] = {k: ident_b[k] for k in ("path", "sha256", "name", "version")}
        _, meta_b = _session(compare, threads=1) if compare else (None, None)
        tb = ident_b["thresholds"].get(meta_b.default_operating_point, 0.5) if meta_b else 0.5
        rep["compare_checks"] = model_checks(out_b, entries, root, tb, box_map,
                                             (meta_b.extra.get("heatmap") or {}).get("guess_point") if meta_b else None,
                                             seed)
        if "nodule_score" in out_b and meta_b is not None:
            rep["compare_nodule"] = _nodule_block(out_b["nodule_score"], entries, dict(meta_b.nodule_thresholds),
                                                  rep["headline_sources"], n_boot, seed)
    if out:
        write_report(rep, out, entries, scores, b)
    return rep


def _nodule_block(nodule: np.ndarray, entries: Sequence[Entry], thresholds: dict[str, float],
                  headline_sources: Sequence[str], n_boot: int, seed: int) -> dict[str, Any]:
    head = [i for i, e in enumerate(entries) if (e.source or "unknown") in headline_sources]
    block = {"headline": nodule_figures(nodule[head], [entries[i] for i in head], thresholds, n_boot, seed),
             "by_source": {}}
    for src, idx in _groups(entries, lambda e: e.source or "unknown").items():
        f = nodule_figures(nodule[idx], [entries[i] for i in idx], thresholds, n_boot, seed)
        if f["nodule_or_mass_films"]:
            block["by_source"][src] = f
    return block


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


# ---------------------------------------------------------------- rendering

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
        for label, c in [("headline", cmp_["headline"]), *((f"source {k}", v) for k, v in cmp_["by_source"].items())]:
            if c is None:
                lines.append(f"    {label}: n/a (needs normal and abnormal films)")
                continue
            lo, hi = c["paired_bootstrap_ci95"]
            lines.append(f"    {label}: AUROC {c['auroc_a']:.3f} vs {c['auroc_b']:.3f}, difference "
                         f"{c['difference']:+.3f} (paired bootstrap 95% CI {lo:+.3f} to {hi:+.3f}; "
                         f"DeLong p={c['delong_p_value']:.3f}), {c['films']} films")
        for w in (cmp_["headline"] or {}).get("workload_at_equal_sensitivity", []):
            lines.append(f"    all films called likely normal with each model's threshold re-chosen on these films for "
                         f"sensitivity {w['target_sensitivity']:g}: {w['workload_a']:.1%} vs "
                         f"{w['workload_b']:.1%} (difference {w['difference']:+.1%}, CI {w['low']:+.1%} to {w['high']:+.1%})")
    return "\n".join(lines)


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
        from cxr_triage.evaluation.model_checks import wilson_text

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
        for label, c in [("headline", cmp_["headline"]), *cmp_["by_source"].items()]:
            if c is None:
                parts.append(f"<tr><td class=l>{e(label)}</td><td colspan=5>n/a</td></tr>")
                continue
            lo, hi = c["paired_bootstrap_ci95"]
            parts.append(f"<tr><td class=l>{e(label)}</td><td>{c['films']}</td><td>{c['auroc_a']:.3f}</td>"
                         f"<td>{c['auroc_b']:.3f}</td><td>{c['difference']:+.3f} ({lo:+.3f} to {hi:+.3f})</td>"
                         f"<td>{c['delong_p_value']:.3f}</td></tr>")
        parts.append("</table>")
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


# ---------------------------------------------------------------- command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``cxr-triage report`` (also ``python -m cxr_triage.training.report``)."""
    p.add_argument("--model", help="ONNX model file to report on (default: the bundled model)")
    p.add_argument("--manifest", help="manifest CSV with a split column, e.g. <run>/split.csv "
                   "(default: the bundled model's model/default_split.csv)")
    p.add_argument("--data-root", "--data", dest="data_root",
                   help="folder the manifest's file paths are relative to (default: the manifest's folder; "
                        "the shared data for the bundled split)")
    p.add_argument("--split", default="test", help="split to report on ('all': every film)")
    p.add_argument("--headline-sources", nargs="*", default=None, metavar="SOURCE",
                   help="sources of the headline figures (default: every source in the split)")
    p.add_argument("--compare", metavar="MODEL", help="second ONNX model: paired comparison on the same films")
    p.add_argument("--site-threshold", metavar="FILE",
                   help="`cxr-triage commission` file of this model: report its operating point too")
    p.add_argument("--boxes", metavar="CSV", help="file,x,y,width,height boxes of findings: the heatmap's pointing "
                   "game (default for the bundled split: the shared RSNA opacity boxes)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for the AUROC CIs")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--out", help="JSON report to write (HTML and scores CSV beside it); a folder gets "
                   "test_report.json")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables instead of the summary")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the summary")


def run(args: argparse.Namespace, cfg: Any = None) -> int:
    """``cxr-triage report``: exit 0, or 2 with one line on stderr."""
    from cxr_triage.contract.manifest import ManifestError
    from cxr_triage.inference.site_threshold import SiteThresholdError
    from cxr_triage.paths import bundled_model_path, repo_root, shared_data_dir

    model = args.model or bundled_model_path()
    manifest = args.manifest
    data_root = args.data_root
    headline = args.headline_sources
    default_split = repo_root() / "model" / "default_split.csv"
    if manifest is None or Path(manifest).resolve() == default_split.resolve():
        # the bundled model's split: its model card's headline is the NIH films
        manifest = default_split
        headline = headline or ["nih-cxr14", "nih-extra", "rsna-pneumonia"]
        if data_root is None:
            try:
                data_root = shared_data_dir()
            except FileNotFoundError as exc:
                print(f"cxr-triage report: {exc}", file=sys.stderr)
                return 2
        if args.boxes is None and (Path(data_root) / "rsna-pneumonia" / "boxes.csv").exists():
            args.boxes = str(Path(data_root) / "rsna-pneumonia" / "boxes.csv")
    try:
        rep = test_report(model, manifest, data_root, args.out, args.split,
                          headline_sources=headline, compare=args.compare,
                          site_threshold=args.site_threshold, n_boot=args.n_boot, seed=args.seed,
                          boxes=args.boxes)
    except (ReportError, ManifestError, SiteThresholdError, OSError) as exc:
        print(f"cxr-triage report: {exc}", file=sys.stderr)
        return 2
    if args.markdown:
        print(markdown(rep))
    elif args.json:
        print(json.dumps(rep, indent=1))
    else:
        print(terminal_summary(rep))
        if args.out:
            out = Path(args.out)
            out = out if out.suffix == ".json" else (out / "test_report.json" if not out.suffix else out.with_suffix(".json"))
            print(f"report: {out} and {out.with_suffix('.html')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cxr_triage.training.report", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
