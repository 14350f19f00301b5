"""Genuine vendor films through the node (issue 15): pydicom-data's Philips CR chest PA
(``RG1_J2KR``: MONOCHROME1, 15 bits, JPEG 2000 lossless) and Fuji CR extremity (``RG3_J2KR``)
sent by dcmtk ``storescu -xv`` in their own transfer syntax to an in-process node.

The chest film must be triaged (assessable, scored) and the extremity refused as
``non_chest``; each study's SR in the outbox says so. Reader and gate tests on the same files:
``tests/inference/test_inference_vendor_films.py``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from support.node_peers import DCMTK, NODE_AET

from cxr_triage.config import load_config
from cxr_triage.contract.result import Decision, NotAssessableReason
from cxr_triage.dicom_node.results.sr_reader import read_result_sr
from cxr_triage.dicom_node.service.node import Node

CHEST, EXTREMITY = "RG1_J2KR.dcm", "RG3_J2KR.dcm"


def _vendor_film(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} not found: install the test extra (pydicom-data)"
    return Path(str(path))


@pytest.fixture
def node(tmp_path: Path, tiny_model: Path):
    cfg = load_config(environ={}).replace(
        node={"host": "127.0.0.1", "port": 0, "state_dir": str(tmp_path / "state"),
              "quiet_period_s": 0.3},
        inference={"model_path": str(tiny_model), "threads": 1},
        delivery={"summary_image": False},
        web={"enabled": False},
    )
    n = Node(cfg).start()
    yield n
    n.stop(timeout_s=10)


@pytest.mark.reliability
def test_vendor_cr_films_through_the_node(node: Node) -> None:
    films = {name: _vendor_film(name) for name in (CHEST, EXTREMITY)}
    sent = subprocess.run([str(DCMTK / "storescu"), "-xv", "-aet", "VENDORSCU", "-aec", NODE_AET,
                           "127.0.0.1", str(node.port), *map(str, films.values())],
                          capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr
    assert node.wait_idle(120)
    headers = {name: dcmread(path, stop_before_pixels=True) for name, path in films.items()}
    for name, ds in headers.items():
        study = node.queries.get_study(str(ds.StudyInstanceUID))
        assert study is not None and study["state"] == "triaged", (name, study)
        (film,) = study["result"]["films"]
        assert film["sop_instance_uid"] == ds.SOPInstanceUID
        (sr_file,) = (node.dirs.outbox / str(ds.StudyInstanceUID)).glob("*.dcm")
        parsed = read_result_sr(dcmread(sr_file)).film(str(ds.SOPInstanceUID))
        if name == CHEST:
            assert film["decision"] in ("likely_normal", "suspicious"), film
            assert film["score"] is not None and 0.0 <= film["score"] <= 1.0
            assert parsed.decision in (Decision.LIKELY_NORMAL, Decision.SUSPICIOUS)
        else:
            assert film["decision"] == "not_assessable" and film["reason"] == "non_chest", film
            assert "EXTREMITY" in film["reason_detail"]
            assert parsed.decision is Decision.NOT_ASSESSABLE
            assert parsed.reason is NotAssessableReason.NON_CHEST
