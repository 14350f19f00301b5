"""bench/multinode.py end to end at a tiny size: its plumbing, not its speed.

Every configuration (one SQLite node; 1, 2 and 3 nodes on one real PostgreSQL) triages the
same studies, its claim latencies come from the nodes' logs and the store, and the ratios and
the scaling verdict are there. Skipped without the PostgreSQL server binaries.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from support.postgres_server import skip_reason  # noqa: E402

CONFIGS = ("sqlite_1", "postgresql_1", "postgresql_2", "postgresql_3")


@pytest.mark.slow
@pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
def test_multinode_runs_every_configuration_on_the_same_studies() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "multinode.py"), "--n", "3", "--idle", "3",
                           "--distinct", "1", "--rounds", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert list(out["configs"]) == list(CONFIGS)
    for name, cfg in out["configs"].items():
        assert cfg["studies_per_s"] > 0 and len(cfg["studies_per_s_rounds"]) == 1, name
        claims = cfg["claim_latency_ms"]
        assert claims["idle"]["n"] == 3 and claims["loaded"]["n"] == 3, name   # every study, once
        assert 0 <= claims["idle"]["p50"] <= claims["idle"]["max"], name
        assert cfg["cpu"]["nodes_cpu_s"] > 0, name
    assert out["configs"]["sqlite_1"]["cpu"]["database_cpu_s"] == 0
    assert out["ratios_vs_sqlite_1"]["sqlite_1"] == 1.0 and set(out["ratios_vs_sqlite_1"]) == set(CONFIGS)
    assert out["scaling_limit"]["verdict"] and out["scaling_limit"]["cores"] >= 1
