"""The nodule/mass output refitted as a linear probe on the model's pooled features
(training/nodule_head.py, issue 22): what the written file computes, what it keeps, and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from cxr_triage.contract.files import file_sha256
from cxr_triage.contract.model_file import INPUT_NAME, METADATA_KEY, NODULE_OUTPUT, SCORE_OUTPUT, ModelMetadata
from cxr_triage.inference.scorer import onnx_session
from cxr_triage.training import nodule_head
from cxr_triage.training.manifest import Entry, read_manifest, resolve, write_manifest
from cxr_triage.training.report_scoring import input_batches

SIZE = 32


def _meta(path: Path) -> ModelMetadata:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return ModelMetadata.from_json(props[METADATA_KEY])


def _films(root: Path, val_positives: int = 8) -> Path:
    """Training and validation films of nih-cxr14: Nodule/Mass films (a bright disc), normals
    (noise only) and other abnormal films (a bright band: not in the probe), as a manifest."""
    rng = np.random.default_rng(0)
    entries = []
    for split, n_pos, n_norm in (("train", 16, 16), ("val", val_positives, 12)):
        for kind, n in (("pos", n_pos), ("norm", n_norm), ("other", 4)):
            for i in range(n):
                img = rng.normal(90, 25, (64, 64))
                if kind == "pos":
                    yy, xx = np.mgrid[:64, :64]
                    img[(yy - rng.integers(16, 48)) ** 2 + (xx - rng.integers(16, 48)) ** 2 < 64] += 120
                elif kind == "other":
                    img[20:30, :] += 100
                name = f"{split}_{kind}{i}.png"
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name)
                entries.append(Entry(file=name, label=int(kind != "norm"), source="nih-cxr14", split=split,
                                     findings={"pos": "Nodule", "norm": "No Finding", "other": "Effusion"}[kind],
                                     nodule_or_mass=int(kind == "pos")))
    write_manifest(entries, root / "labels.csv")
    return root / "labels.csv"


def _outputs(model: Path, paths: list[Path]) -> dict[str, np.ndarray]:
    sess = onnx_session(model, 1)
    spec = _meta(model).preprocessing
    got = [sess.run([SCORE_OUTPUT, NODULE_OUTPUT], {INPUT_NAME: x}) for x in input_batches(paths, spec, 16)]
    return {SCORE_OUTPUT: np.concatenate([g[0] for g in got]), NODULE_OUTPUT: np.concatenate([g[1] for g in got])}


def test_the_written_nodule_output_is_the_probe_and_the_rest_is_unchanged(ensemble_file: Path, tmp_path: Path) -> None:
    manifest = _films(tmp_path)
    out = tmp_path / "nh.onnx"
    rc = nodule_head.main(["--model", str(ensemble_file), "--manifest", str(manifest), "--data-root", str(tmp_path),
                           "--sources", "nih-cxr14", "--threads", "1", "--out", str(out)])
    assert rc == 0
    meta, before = _meta(out), _meta(ensemble_file)
    entries = read_manifest(manifest)
    paths = [resolve(e, tmp_path) for e in entries]
    new, old = _outputs(out, paths), _outputs(ensemble_file, paths)
    # the abnormality output is untouched; the nodule/mass output is the probe, calibrated
    np.testing.assert_allclose(new[SCORE_OUTPUT], old[SCORE_OUTPUT], atol=1e-6)
    train, y_train = nodule_head.probe_films(entries, "train", ["nih-cxr14"])
    val, y_val = nodule_head.probe_films(entries, "val", ["nih-cxr14"])
    assert len(train) == 32 and len(val) == 20 and y_train.sum() == 16  # other abnormal films left out
    feats = {s: nodule_head.pooled_features(ensemble_file, [resolve(e, tmp_path) for e in es], 1)
             for s, es in (("train", train), ("val", val))}
    probe = nodule_head.fit_probe(feats["train"], y_train, feats["val"], y_val)
    assert probe["C"] == meta.extra["nodule_head"]["C"]
    z = nodule_head.probe_logits(probe, nodule_head.pooled_features(ensemble_file, paths, 1))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    t, shift = float(inits["nodule_temperature"]), float(inits["nodule_shift"])
    np.testing.assert_allclose(new[NODULE_OUTPUT], 1 / (1 + np.exp(-(z + shift) / t)), atol=2e-3)
    # the metadata's record of the calibration is the graph's
    assert meta.extra["nodule_temperature"] == pytest.approx(t) and meta.extra["nodule_shift"] == pytest.approx(shift)
    # float16 storage kept; the points are the new rule's, chosen on validation; provenance and version
    assert inits["net.members.0.fc.weight__fp16"].dtype == np.float16
    assert set(meta.nodule_thresholds) >= {"normals_0.1", "normals_0.15", "normals_0.2"}
    assert meta.nodule_default_operating_point == "normals_0.15"
    assert meta.nodule_flag_shown == (meta.validation_metrics["nodule"]["flag_rate_points"]["normals_0.15"]
                                      ["sensitivity"] >= 0.6)
    assert meta.version == before.version + "-nh" and meta.thresholds == before.thresholds
    assert meta.extra["nodule_head"]["from_sha256"] == file_sha256(ensemble_file)
    assert meta.extra["nodule_head"]["train_positive"] == 16


def test_no_validation_nodule_films_is_refused_and_nothing_written(ensemble_file: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _films(tmp_path, val_positives=0)
    out = tmp_path / "nh.onnx"
    rc = nodule_head.main(["--model", str(ensemble_file), "--manifest", str(manifest), "--data-root", str(tmp_path),
                           "--sources", "nih-cxr14", "--threads", "1", "--out", str(out)])
    assert rc == 2 and not out.exists()
    assert "validation films hold only one class" in capsys.readouterr().err


def test_a_file_without_fc_layers_is_refused(tiny_nodule_model: Path, tmp_path: Path) -> None:
    with pytest.raises(nodule_head.HeadError, match="no fc layer"):
        nodule_head.pooled_features(tiny_nodule_model, [], 1)


def test_report_compares_nodule_mass_outputs_paired_on_nodule_mass_films_against_normals() -> None:
    """``report --compare``'s paired nodule/mass block (training/report_figures.py): Nodule/Mass
    films against normals only (other abnormal films and label conflicts left out), pooled over the
    headline sources and per source; rendered in the terminal summary."""
    from cxr_triage.training.report_figures import build_report, nodule_comparison
    from cxr_triage.training.report_render import terminal_summary

    rng = np.random.default_rng(0)
    entries, a, b = [], [], []
    for src in ("nih-cxr14", "rsna-pneumonia"):
        for i in range(30):
            kind = ("pos", "norm", "other")[i % 3]
            entries.append(Entry(file=f"{src}{i}.png", label=int(kind != "norm"), source=src, patient_id=f"{src}-{i}",
                                 findings={"pos": "Mass", "norm": "No Finding", "other": "Effusion"}[kind],
                                 nodule_or_mass=int(kind == "pos")))
            truth = kind == "pos"
            a.append(float(truth) + rng.normal(0, 0.3))   # separates
            b.append(rng.normal(0, 1))                    # does not
    entries.append(Entry(file="conflict.png", label=0, source="nih-cxr14", findings="No Finding", nodule_or_mass=1,
                         extra={"label_conflict": "1"}))
    a.append(-5.0)
    b.append(5.0)
    entries.append(Entry(file="extra.png", label=0, source="nih-extra", findings="No Finding"))
    a.append(0.0)
    b.append(0.0)
    cmp_ = nodule_comparison(np.array(a), np.array(b), entries, ["nih-cxr14", "rsna-pneumonia"], 200, 0)
    head = cmp_["headline"]
    assert head["films"] == 40 and head["auroc_a"] > 0.9 > head["auroc_b"] + 0.2
    lo, hi = head["paired_bootstrap_ci95"]
    assert 0 < lo <= head["difference"] <= hi
    assert set(cmp_["by_source"]) == {"nih-cxr14", "rsna-pneumonia", "nih-extra"}
    assert cmp_["by_source"]["nih-cxr14"]["films"] == 20 and cmp_["by_source"]["nih-extra"] is None
    rep = build_report(np.array(a), entries, {"sens_0.98": 0.5}, model="m", split="test", manifest="m.csv",
                       headline_sources=["nih-cxr14", "rsna-pneumonia"], n_boot=50, seed=0)
    text = terminal_summary({**rep, "nodule_comparison": cmp_})
    assert "paired nodule/mass comparison" in text and "source nih-extra: n/a (needs Nodule/Mass and normal films)" in text
