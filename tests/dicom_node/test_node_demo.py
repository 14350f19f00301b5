"""`make demo`'s script against a node: every sample study printed with its decision."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.node_peers import free_port, write_node_config

from cxr_triage.config import load_config
from cxr_triage.dicom_node.service.node import Node
from cxr_triage.dicom_node.tools import demo


def test_demo_prints_each_study_decision(tmp_path: Path, tiny_model: Path, shared_data: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    cfg_path = write_node_config(tmp_path / "node.toml", port, tiny_model, node={"quiet_period_s": 0.3})
    node = Node(load_config(cfg_path)).start()
    try:
        rc = demo.main([str(shared_data / "dicom"), "--config", str(cfg_path), "--timeout", "60"])
    finally:
        node.stop(timeout_s=10)
    out = capsys.readouterr().out
    assert rc == 0, out
    table = out.split("decision", 1)[1]
    rows = [line for line in table.splitlines()[1:] if line.startswith("...")]
    assert len(rows) == 3                               # three studies: one per film sent
    assert "left out siim_cr_chest_pa_MONOCHROME1_variant.dcm: same SOP Instance UID" in out
    assert "MONOCHROME1_variant" not in out.split("left out", 1)[1].split("\n", 1)[1]  # never sent
    assert sum("not_assessable" in r and "non_human" in r for r in rows) == 1
    assert sum(("suspicious" in r or "likely_normal" in r) and "delivered" in r for r in rows) == 2

    from cxr_triage.cli import main

    assert main(["--config", str(cfg_path), "status", "--studies", "5"]) == 0
    status = capsys.readouterr().out
    assert "instances received: 3" in status and "deliveries: delivered 3" in status
    assert "oldest pending: none" in status and "delivery failures: 0" in status
    assert "studies:    triaged 3" in status
    assert sum(" triaged " in line for line in status.split("recent studies:")[1].splitlines()) == 3
