"""Orthanc as the PACS: it forwards a series to the node and files the node's SR in the study."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom import uid as U
from support.node_peers import ORTHANC, NodeProcess, Orthanc, free_port, wait_for, write_node_config

from cxr_triage.dicom_node.tools.film_to_dicom import films_to_study

pytestmark = pytest.mark.skipif(not ORTHANC.exists(), reason="Orthanc is not installed (apt install orthanc)")


@pytest.mark.slow
def test_orthanc_forwards_and_receives_the_result(tmp_path: Path, model_path: Path, shared_data: Path) -> None:
    pngs = sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))[10:12]
    files = films_to_study(pngs, tmp_path / "study", sop_class="CR", transfer_syntax_uid=U.JPEGLosslessSV1)
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port=port)
    cfg = write_node_config(tmp_path / "node.toml", port, model_path,
                            node={"allowed_calling_aets": ["ORTHANC"], "allowed_hosts": ["127.0.0.1"]},
                            delivery={"destinations": [orthanc.destination], "summary_image": True})
    node = NodeProcess(cfg, port)
    with orthanc, node:
        for f in files:
            orthanc.post("/instances", f.read_bytes())
        (series_id,) = orthanc.get("/series")
        studies_before = orthanc.get("/statistics")["CountStudies"]
        assert studies_before == 1
        pushed = orthanc.post("/modalities/triage/store", {"Resources": [series_id], "Synchronous": True})
        assert pushed["InstancesCount"] == len(files) and pushed["FailedInstancesCount"] == 0

        def sr_in_study():
            return orthanc.post("/tools/find", {"Level": "Instance", "Expand": True,
                                                "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}})
        (sr,) = wait_for(sr_in_study, 90, 0.5, "the SR in Orthanc")
        assert orthanc.get("/statistics")["CountStudies"] == studies_before   # same study
        tags = orthanc.get(f"/instances/{sr['ID']}/simplified-tags")
        assert tags["StudyInstanceUID"] == study_uid and tags["CompletionFlag"] == "COMPLETE"
        def summary():
            (row,) = [s for s in node.status()["studies"] if s["study_uid"] == study_uid]
            return row if row["delivery_status"] == "delivered" else None
        summary = wait_for(summary, 30, 0.5, "delivery recorded")   # the summary images follow the SR
        assert summary["n_instances"] == len(files)
        assert summary["decision"] in ("suspicious", "likely_normal")
