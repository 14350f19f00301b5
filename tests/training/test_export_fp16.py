"""Float16 weight storage of a shipped file (training/export_fp16.py, issue 22): the check holds
both AUROCs (abnormal, nodule/mass) to the limit, and the stored file says what it is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from cxr_triage.contract.files import file_sha256
from cxr_triage.contract.model_file import METADATA_KEY, ModelMetadata
from cxr_triage.inference.scorer import Scorer
from cxr_triage.training.export import ExportCheckError
from cxr_triage.training.export_fp16 import MAX_AUROC_CHANGE, _judge, compare_outputs, halve_weights, stamp_half


def _outputs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"score": rng.uniform(0, 1, n), "nodule_score": rng.uniform(0, 1, n)}


def test_the_nodule_mass_auroc_is_held_to_the_limit_too(tiny_nodule_model: Path) -> None:
    rng = np.random.default_rng(0)
    a = _outputs(rng, 400)
    labels = (a["score"] + rng.normal(0, 0.3, 400) > 0.5).astype(int)
    pos = a["nodule_score"] + rng.normal(0, 0.3, 400) > 0.7
    neg = ~pos & (labels == 0)
    same = _judge(compare_outputs(tiny_nodule_model, a, dict(a), labels, pos, neg), 400, 0.995, MAX_AUROC_CHANGE)
    assert same["decision_agreement"] == same["nodule_flag_agreement"] == 1.0
    assert same["auroc_change"] == same["nodule_auroc_change"] == 0.0
    moved = {"score": a["score"], "nodule_score": np.where(pos, a["nodule_score"] * 0.9, a["nodule_score"])}
    res = compare_outputs(tiny_nodule_model, a, moved, labels, pos, neg)
    assert res["decision_agreement"] == 1.0 and abs(res["nodule_auroc_fp32"] - res["nodule_auroc_fp16"]) > 0.002
    with pytest.raises(ExportCheckError):
        _judge(res, 400, 0.995, MAX_AUROC_CHANGE)


def test_the_stored_file_names_itself_and_scores_the_same(tiny_nodule_model: Path, tmp_path: Path) -> None:
    half = halve_weights(tiny_nodule_model, tmp_path / "half.onnx", min_elements=1)
    x = np.random.default_rng(1).normal(0, 0.3, size=(4, 1, 224, 224)).astype(np.float32)
    before = Scorer(half, threads=1).score(x)
    stamp_half(tiny_nodule_model, half, {"val": {"films": 4}})
    stamp_half(tiny_nodule_model, half, {"val": {"films": 4}})
    meta = ModelMetadata.from_json({p.key: p.value for p in onnx.load(str(half)).metadata_props}[METADATA_KEY])
    full = ModelMetadata.from_json({p.key: p.value for p in onnx.load(str(tiny_nodule_model)).metadata_props}[METADATA_KEY])
    assert meta.version == full.version + "-fp16"
    assert meta.extra["float16_storage"] == {"from_sha256": file_sha256(tiny_nodule_model), "checks": {"val": {"films": 4}}}
    after = Scorer(half, threads=1).score(x)
    assert np.array_equal(before.scores, after.scores) and np.array_equal(before.nodule_scores, after.nodule_scores)


def test_make_default_checks_the_float16_file_with_the_nodule_mass_auroc(
        tiny_nodule_model: Path, tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``make train``'s export (``make_default.export_half_checked``) checks the float16 file
    with ``check_half_films`` (real films scored as the report scores them, the nodule/mass
    AUROC held too), stamps it as the shipped file is stamped and refits its nodule/mass probe."""
    import shutil

    import torch

    from cxr_triage.contract.preprocessing import preprocess
    from cxr_triage.training import export_fp16, make_default
    from cxr_triage.training.dataset import read_pixels
    from cxr_triage.training.manifest import Entry, write_manifest
    from cxr_triage.training.report_scoring import model_session

    def outputs(model: Path, paths: list[Path]) -> dict[str, np.ndarray]:
        """The report's scoring without the class-activation map (the tiny model has none)."""
        spec = model_session(model, threads=1)[1].preprocessing
        return export_fp16._outputs(Path(model), np.stack([preprocess(read_pixels(p), spec) for p in paths]))

    pngs = sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))[:6]
    entries = [Entry(file=str(p.relative_to(shared_data)), label=i % 2, patient_id=f"p{i}", source="nih-cxr14",
                     findings="Nodule" if i % 2 else "No Finding", split="val") for i, p in enumerate(pngs)]
    manifest = write_manifest(entries, tmp_path / "split.csv")
    torch.save({"architecture": "effnet_lite0"}, tmp_path / "model.pt")  # read once for the file's name
    monkeypatch.setattr(make_default, "export_checkpoint", lambda checkpoint, out, **kw: shutil.copy(tiny_nodule_model, out) and {})
    monkeypatch.setattr(export_fp16, "model_outputs", outputs)
    monkeypatch.setattr(make_default, "film_domain_check", lambda *a: {})
    monkeypatch.setattr(make_default, "synthetic_lesion_check", lambda *a: {})
    refits: list[tuple[object, ...]] = []
    monkeypatch.setattr(make_default, "refit", lambda *a: refits.append(a) or {"C": 1.0})
    half = make_default.export_half_checked(tmp_path, shared_data, manifest)
    # the nodule/mass probe is refitted on the float16 file itself, in place (training/nodule_head.py)
    assert refits == [(half, manifest, shared_data, half, make_default.TRAIN_SOURCES)]
    checks = json.loads((tmp_path / "export_checks.json").read_text())["fp16"]
    assert checks["films"] == 6 and "nodule_auroc_change" in checks and checks["nodule_auroc_change"] <= MAX_AUROC_CHANGE
    meta = ModelMetadata.from_json({p.key: p.value for p in onnx.load(str(half)).metadata_props}[METADATA_KEY])
    assert meta.version.endswith("-fp16") and meta.extra["float16_storage"]["checks"]["val"]["films"] == 6


def test_make_default_names_the_file_after_its_networks() -> None:
    """The run's file and model name say which EfficientNet-Lite it holds (issue 22, round 4):
    one architecture, an ensemble of one, or the distinct members of a mixed ensemble in order."""
    from cxr_triage.training.make_default import network_label

    assert network_label({"architecture": "effnet_lite1"}) == "effnet_lite1"
    same = [{"architecture": "effnet_lite0"}, {"architecture": "effnet_lite0"}]
    assert network_label({"architecture": "ensemble", "members": same}) == "effnet_lite0"
    mixed = [*same, {"architecture": "effnet_lite1"}]
    assert network_label({"architecture": "ensemble", "members": mixed}) == "effnet_lite0_effnet_lite1"


def test_make_default_refuses_a_float16_file_over_the_size_limit(
        tiny_nodule_model: Path, tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The float32 intermediate may reach twice the limit; the float16 file it ships may not."""
    import shutil

    import torch

    from cxr_triage.training import make_default

    sizes: list[int] = []
    torch.save({"architecture": "effnet_lite0"}, tmp_path / "model.pt")
    monkeypatch.setattr(make_default, "export_checkpoint",
                        lambda checkpoint, out, **kw: sizes.append(kw["max_bytes"]) or shutil.copy(tiny_nodule_model, out) and {})
    monkeypatch.setattr(make_default, "MAX_BYTES", 1000)  # the tiny float16 file is larger than this
    with pytest.raises(ExportCheckError, match="stored as float16, over the"):
        make_default.export_half_checked(tmp_path, shared_data, tmp_path / "unused.csv")
    assert sizes == [2000]
    # the refused float16 file is not left beside the run (the float32 intermediate is)
    assert not (tmp_path / "cxr_triage_effnet_lite0.onnx").exists()
    assert (tmp_path / "cxr_triage_effnet_lite0_fp32.onnx").exists()
