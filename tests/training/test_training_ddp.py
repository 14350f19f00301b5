"""The training entry point under torchrun: 2 CPU processes (gloo), a few steps."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for p in range(40):
        label = p % 2
        img = rng.normal(100 + 40 * label, 20, (40, 40)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / f"f{p}.png")
        rows.append([f"f{p}.png", "abnormal" if label else "normal", f"p{p}"])
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as fh:
        csv.writer(fh).writerows([["file", "label", "patient_id"], *rows])
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "cxr_triage.training.cli", "train", "--manifest", str(manifest), "--out", str(out),
           "--architecture", "tiny", "--no-pretrained", "--image-size", "32", "--harmonise-size", "32",
           "--epochs", "2", "--batch-size", "4", "--max-steps-per-epoch", "3", "--threads", "1", "--no-progress"]
    # own process group: on a hang, the launcher and both workers are killed together
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("torchrun did not finish in 240 s")
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["epochs_run"] == 2
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # written once (rank 0), not once per process
    assert (out / "model.pt").exists()
