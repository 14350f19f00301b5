"""The benchmarks' plumbing: they run end to end and their figures add up.

No speed is asserted here (speed targets live in bench/ and its JSON): these tests check that
the stage timers account for the measured latency, and that the profile summary reads
py-spy's format.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))


def test_profile_summary_counts_inclusive_shares(tmp_path: Path):
    from latency import summarise_profile

    raw = tmp_path / "profile.raw"
    raw.write_text(
        "Thread._bootstrap (threading.py:1002);TriageWorker.run (dicom_node/worker.py:218);"
        "build_report (dicom_node/worker.py:121) 3\n"
        "Thread._bootstrap (threading.py:1002);TriageWorker.run (dicom_node/worker.py:218);"
        "read_film (inference/reader.py:90) 1\n"
    )
    out = summarise_profile(raw)
    assert out["samples"] == 4
    assert out["inclusive_share"]["TriageWorker.run (worker.py)"] == 1.0
    assert out["inclusive_share"]["build_report (worker.py)"] == 0.75
    assert out["inclusive_share"]["read_film (reader.py)"] == 0.25


@pytest.mark.slow
def test_latency_stage_timers_account_for_the_total():
    proc = subprocess.run([sys.executable, str(BENCH / "latency.py"), "--n", "3", "--warmup", "1",
                           "--distinct", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["studies"] == 3 and out["failures"] == 0
    stages = out["breakdown_ms"]
    for key in ("receive", "decode", "preprocess", "model", "sr_build", "send"):
        assert stages[key]["mean"] > 0, key
    # the stages are disjoint and cover the clock: what is left over is small
    assert abs(stages["unaccounted"]["mean"]) < 0.1 * out["latency_ms"]["mean"]
    assert 0 < out["model_share_of_mean_total"] < 1
    # the result objects: the summary image stored compressed (lossless JPEG-LS), its size and
    # send time measured per object, like the SR's
    objects = out["result_objects"]
    image = objects["summary_image"]
    assert image["objects"] == objects["sr"]["objects"] == 3
    assert image["transfer_syntax"] == "JPEG-LS Lossless Image Compression"
    assert 0 < image["bytes"]["mean"] < image["uncompressed_bytes"]["mean"] / 2
    assert image["compression_ratio_mean"] > 2
    assert image["send_ms"]["mean"] > 0 and objects["sr"]["send_ms"]["mean"] > 0
