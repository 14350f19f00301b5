"""Shared fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxr_triage.contract.preprocessing import PreprocessSpec
from cxr_triage.training.export import build_metadata, export_onnx
from cxr_triage.training.export_fp16 import halve_weights
from cxr_triage.training.network import EnsembleNet, ExportWrapper, build_network

SIZE = 32


@pytest.fixture(scope="session")
def ensemble_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-member tiny ensemble exported by the project, weights stored as float16."""
    out = tmp_path_factory.mktemp("nh")
    torch.manual_seed(0)
    net = EnsembleNet([build_network("tiny", pretrained=False, image_size=SIZE, n_outputs=16) for _ in range(2)])
    wrapper = ExportWrapper(net, temperature=1.5, logit_shift=0.2, nodule_temperature=2.0, nodule_shift=-1.0).eval()
    ck = {"architecture": "ensemble", "config": {"architecture": "tiny"},
          "preprocessing": PreprocessSpec(size=SIZE, harmonise_size=SIZE).to_dict(),
          "thresholds": {"sens_0.98": 0.3}, "nodule_thresholds": {"sens_0.9": 0.2}, "nodule_temperature": 2.0,
          "nodule_shift": -1.0}
    full = export_onnx(wrapper, build_metadata(ck, "tiny-nh", "1"), out / "full.onnx")
    return halve_weights(full, out / "half.onnx", min_elements=64)
