"""Re-pointing a model file's nodule/mass flag by the share of validation normals
(training/nodule_point.py, issue 22), and what a study then says when the flag is not shown."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from cxr_triage.config import load_config
from cxr_triage.contract.files import file_sha256
from cxr_triage.contract.model_file import METADATA_KEY, ModelMetadata
from cxr_triage.contract.result import aggregate_study
from cxr_triage.inference.pipeline import Triager
from cxr_triage.training import nodule_point
from cxr_triage.training.manifest import Entry, ManifestError, write_manifest


def _meta(path: Path) -> ModelMetadata:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return ModelMetadata.from_json(props[METADATA_KEY])


def _films(root: Path, n_pos: int, n_norm: int) -> list[Entry]:
    """Val films of nih-cxr14: Nodule/Mass films, normals, one label conflict, one other
    source and one training film (the last three must not choose the point)."""
    out = [Entry(file=f"p{i}.png", label=1, findings="Nodule", nodule_or_mass=1, source="nih-cxr14", split="val")
           for i in range(n_pos)]
    out += [Entry(file=f"n{i}.png", label=0, findings="No Finding", source="nih-cxr14", split="val")
            for i in range(n_norm)]
    out += [Entry(file="conflict.png", label=0, findings="No Finding", nodule_or_mass=1, source="nih-cxr14",
                  split="val", extra={"label_conflict": "1"}),
            Entry(file="other.png", label=0, source="rsna-normals", split="val"),
            Entry(file="train.png", label=0, findings="No Finding", source="nih-cxr14", split="train")]
    for e in out:
        Image.fromarray(np.full((64, 64), 100, np.uint8)).save(root / e.file)
    return out


def _run(monkeypatch: pytest.MonkeyPatch, model: Path, tmp_path: Path, pos: np.ndarray, norm: np.ndarray,
         split_from: Path | None = None) -> tuple[int, Path]:
    """Run the command with the nodule/mass scores of the films chosen (positives, normals)."""
    seen: list[list[Path]] = []

    def fake_outputs(path: Path, paths: list[Path]) -> dict[str, np.ndarray]:
        seen.append(paths)
        return {"nodule_score": np.r_[pos, norm]}

    monkeypatch.setattr(nodule_point, "model_outputs", fake_outputs)
    out = tmp_path / "repointed.onnx"
    argv = ["--model", str(model), "--manifest", str(tmp_path / "labels.csv"), "--data-root", str(tmp_path),
            "--sources", "nih-cxr14", "--out", str(out)]
    rc = nodule_point.main(argv + (["--split-from", str(split_from)] if split_from else []))
    assert [p.name for p in seen[0]] == [f"p{i}.png" for i in range(len(pos))] + [f"n{i}.png" for i in range(len(norm))]
    return rc, out


def test_a_flag_that_catches_enough_is_shown_at_15_percent_of_normals(tiny_nodule_model, tmp_path, monkeypatch):
    write_manifest(_films(tmp_path, 10, 40), tmp_path / "labels.csv")
    rng = np.random.default_rng(0)
    rc, out = _run(monkeypatch, tiny_nodule_model, tmp_path, rng.uniform(0.8, 0.9, 10), rng.uniform(0.1, 0.7, 40))
    assert rc == 0
    meta, before = _meta(out), _meta(tiny_nodule_model)
    assert meta.nodule_default_operating_point == "normals_0.15" and meta.nodule_flag_shown is True
    assert {"normals_0.1", "normals_0.15", "normals_0.2"} <= set(meta.nodule_thresholds)
    assert {k: meta.nodule_thresholds[k] for k in before.nodule_thresholds} == before.nodule_thresholds
    point = meta.validation_metrics["nodule"]["flag_rate_points"]["normals_0.15"]
    assert point["normals_flagged"] <= 0.15 and point["sensitivity"] == 1.0
    assert meta.extra["nodule_repoint"]["model_sha256_before"] == file_sha256(tiny_nodule_model)
    assert (meta.name, meta.version, meta.thresholds) == (before.name, before.version, before.thresholds)
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == [n.op_type for n in
                                                                   onnx.load(str(tiny_nodule_model)).graph.node]


def test_a_weak_flag_is_not_shown_and_a_study_then_states_no_flag(tiny_nodule_model, tmp_path, monkeypatch,
                                                                   sample_dicoms):
    """Under 60% of Nodule/Mass films caught: ``nodule_flag_shown`` false; the worker gives
    each film its score without a flag and the study states no flag (not 'absent')."""
    write_manifest(_films(tmp_path, 10, 40), tmp_path / "labels.csv")
    rng = np.random.default_rng(1)
    rc, out = _run(monkeypatch, tiny_nodule_model, tmp_path, rng.uniform(0.1, 0.6, 10), rng.uniform(0.1, 0.7, 40))
    assert rc == 0 and _meta(out).nodule_flag_shown is False
    t = Triager(load_config(None, environ={}).replace(inference={"model_path": str(out), "threads": 1}))
    r = t.triage_file(sample_dicoms["siim_cr_chest_pa"])
    assert t.nodule_operating_point == "normals_0.15" and r.nodule_score is not None and r.nodule_flag is None
    study = aggregate_study(r.study_instance_uid or "1.2.3", [r])
    assert study.nodule_score == r.nodule_score and study.nodule_flag is None


def test_the_split_comes_from_another_manifest(tiny_nodule_model, tmp_path, monkeypatch):
    films = _films(tmp_path, 10, 40)
    write_manifest(films, tmp_path / "labels.csv")
    for e in films:  # the labels' own split would choose nothing
        e.split = "test" if e.split == "val" else "val"
    write_manifest(films, tmp_path / "labels.csv")
    for e in films:
        e.split = "val" if e.file != "train.png" else "train"
    write_manifest(films, tmp_path / "old.csv")
    rc, _ = _run(monkeypatch, tiny_nodule_model, tmp_path, np.full(10, 0.9), np.linspace(0.1, 0.5, 40),
                 split_from=tmp_path / "old.csv")
    assert rc == 0
    with pytest.raises(ManifestError):
        nodule_point.resplit(films, films[:-1])


def test_the_figures_are_printed(tiny_nodule_model, tmp_path, monkeypatch, capsys):
    write_manifest(_films(tmp_path, 4, 20), tmp_path / "labels.csv")
    _run(monkeypatch, tiny_nodule_model, tmp_path, np.full(4, 0.9), np.linspace(0.1, 0.5, 20))
    figures = json.loads(capsys.readouterr().out)
    assert (figures["films"], figures["positive"], figures["normals"]) == (24, 4, 20)
