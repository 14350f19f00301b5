"""--init-from: a model file of this project back into its torch network (the ONNX export
round trip, float16 storage included), refusals, and a tiny fine-tune run from an ONNX file."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from cxr_triage.cli import main as cli_main
from cxr_triage.contract.model_file import METADATA_KEY
from cxr_triage.contract.preprocessing import PreprocessSpec
from cxr_triage.training.export import build_metadata, export_onnx
from cxr_triage.training.export_fp16 import halve_weights
from cxr_triage.training.init_from import InitModelError, check_against_onnx, network_from_onnx
from cxr_triage.training.network import EnsembleNet, ExportWrapper, build_network

SIZE = 32


def _tiny_file(path: Path, members: int, n_out: int = 16, seed: int = 0) -> tuple[Path, ExportWrapper]:
    """A tiny network (or ensemble) with random weights and BatchNorm statistics, exported by the project."""
    torch.manual_seed(seed)
    nets = [build_network("tiny", pretrained=False, image_size=SIZE, n_outputs=n_out) for _ in range(members)]
    for net in nets:
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # statistics the export must fold
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
    net = nets[0] if members == 1 else EnsembleNet(nets)
    wrapper = ExportWrapper(net, temperature=1.7, logit_shift=0.3, nodule_temperature=2.0, nodule_shift=-1.0).eval()
    ck = {"architecture": "tiny" if members == 1 else "ensemble", "config": {"architecture": "tiny"},
          "preprocessing": PreprocessSpec(size=SIZE, harmonise_size=SIZE).to_dict(),
          "thresholds": {"sens_0.98": 0.3}, "nodule_thresholds": {"sens_0.9": 0.2}, "nodule_temperature": 2.0,
          "nodule_shift": -1.0}
    return export_onnx(wrapper, build_metadata(ck, "tiny-init", "1"), path), wrapper


def _inputs(n: int = 3) -> np.ndarray:
    return np.random.default_rng(1).normal(0, 1, (n, 1, SIZE, SIZE)).astype(np.float32)


@pytest.mark.parametrize("members", [1, 2])
def test_onnx_file_loads_back_into_the_same_network(tmp_path: Path, members: int) -> None:
    path, wrapper = _tiny_file(tmp_path / "m.onnx", members)
    init = network_from_onnx(path)
    assert (init.members, init.architecture, init.image_size, init.n_outputs) == (members, "tiny", SIZE, 16)
    assert init.calibration["temperature"] == pytest.approx(1.7)
    assert check_against_onnx(init, _inputs()) < 1e-5
    x = torch.from_numpy(_inputs())
    with torch.no_grad():  # the logits themselves, not only the calibrated outputs
        assert torch.allclose(init.net.eval()(x), wrapper.net(x), atol=1e-5)
    half = network_from_onnx(halve_weights(path, tmp_path / "half.onnx", min_elements=1))
    assert check_against_onnx(half, _inputs()) < 1e-5


def test_a_file_that_does_not_match_is_refused(tmp_path: Path) -> None:
    path, _ = _tiny_file(tmp_path / "m.onnx", 1)
    init = network_from_onnx(path)
    with torch.no_grad():
        init.net.fc.bias.add_(0.5)  # the rebuilt network no longer computes what the file does
    with pytest.raises(InitModelError, match="disagrees with ONNX Runtime"):
        check_against_onnx(init, _inputs())
    model = onnx.load(str(path))
    meta = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps({**meta, "architecture": "effnet_lite0"})})
    onnx.save(model, str(tmp_path / "wrong.onnx"))
    with pytest.raises(InitModelError, match="convolutions in the file"):
        network_from_onnx(tmp_path / "wrong.onnx")
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    with pytest.raises(InitModelError, match="not a model file exported by cxr-triage"):
        network_from_onnx(tmp_path / "bare.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(InitModelError, match="not an ONNX model"):
        network_from_onnx(tmp_path / "junk.onnx")


def _manifest(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = []
    for p in range(40):
        label = p % 3 == 0
        img = rng.normal(110, 20, (SIZE + 8, SIZE))
        if label:
            img[8:20, 8:20] += 80
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "img" / f"p{p}.png")
        rows.append([f"img/p{p}.png", "abnormal" if label else "normal", f"p{p}", "site"])
    with (root / "m.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["file", "label", "patient_id", "source"], *rows])
    return root / "m.csv"


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(run folder, stderr) of a 1-epoch fine-tune of a tiny two-member ensemble exported by the project."""
    tmp = tmp_path_factory.mktemp("ft")
    init, _ = _tiny_file(tmp / "init.onnx", 2)
    out = tmp / "run"
    args = ["train", "--manifest", str(_manifest(tmp / "films")), "--out", str(out), "--init-from", str(init),
            "--epochs", "1", "--batch-size", "8", "--threads", "1", "--no-progress", "--pipeline-augment", "0"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli_main(args) == 0
    return out, err.getvalue()


def test_init_from_fine_tunes_and_compares_with_the_init_model(fine_tuned: tuple[Path, str]) -> None:
    out, err = fine_tuned
    assert "agrees with ONNX Runtime" in err and "cxr-triage report --model" in err
    summary = json.loads((out / "train_summary.json").read_text())
    cfg, comparison = summary["config"], summary["init_comparison"]
    assert (cfg["lr"], cfg["head_epochs"], cfg["members"], cfg["image_size"]) == (1e-4, 1, 2, SIZE)
    assert comparison["films"] > 0 and "init model" in comparison["verdict"]
    ck = torch.load(out / "model.pt", weights_only=False)
    assert ck["architecture"] == "ensemble" and len(ck["members"]) == 2


def test_a_fine_tuned_ensemble_exports_and_resumes(fine_tuned: tuple[Path, str], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    out, _ = fine_tuned
    assert cli_main(["export", "--checkpoint", str(out / "model.pt"), "--out", str(tmp_path / "site.onnx")]) == 0
    assert network_from_onnx(tmp_path / "site.onnx").members == 2
    assert cli_main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert "init comparison on this run's" in capsys.readouterr().err


def test_mix_bundled_adds_shared_training_films_to_the_training_split_only(tmp_path: Path, shared_data: Path) -> None:
    from cxr_triage.training.finetune import mix_bundled
    from cxr_triage.training.manifest import read_manifest
    from cxr_triage.training.train_config import TrainConfig

    site = _manifest(tmp_path / "films")
    cfg = mix_bundled(TrainConfig(manifest=str(site), out=str(tmp_path / "run"), mix_bundled=5))
    rows = read_manifest(cfg.manifest)
    assert Path(cfg.data_root) == (tmp_path / "run").resolve() and len(rows) == 45
    added = [e for e in rows if e.source != "site"]
    assert len(added) == 5 and {e.split for e in added} == {"train"} and all(e.split == "" for e in rows[:40])
    assert all((Path(cfg.data_root) / e.file).is_file() for e in rows)


@pytest.mark.parametrize("architecture", ["effnet_lite0", "effnet_lite1"])
def test_an_effnet_lite_file_loads_back(tmp_path: Path, architecture: str) -> None:
    """``--init-from`` rebuilds Lite0 and the larger Lite1 tried for issue 22 from their ONNX files
    (BatchNorm folded into each convolution by the export)."""
    size = 64
    torch.manual_seed(0)
    net = build_network(architecture, pretrained=False, image_size=size, n_outputs=16)
    wrapper = ExportWrapper(net, temperature=1.3).eval()
    ck = {"architecture": architecture, "preprocessing": PreprocessSpec(size=size, harmonise_size=size).to_dict(),
          "thresholds": {"sens_0.98": 0.3}, "nodule_thresholds": {"sens_0.9": 0.2}, "nodule_temperature": 1.0,
          "nodule_shift": 0.0}
    path = export_onnx(wrapper, build_metadata(ck, "lite-init", "1"), tmp_path / "m.onnx")
    init = network_from_onnx(path)
    assert (init.architecture, init.members, init.image_size) == (architecture, 1, size)
    x = np.random.default_rng(1).normal(0, 1, (2, 1, size, size)).astype(np.float32)
    assert check_against_onnx(init, x) < 1e-4
