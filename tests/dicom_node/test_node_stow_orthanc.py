"""Orthanc with its DICOMweb plugin as the PACS: it pushes a study to the node over STOW-RS
(``/dicom-web/servers/<name>/stow``) and receives the node's result SR back over STOW-RS
(the node's destination ``dicomweb:http://…/dicom-web``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom import uid as U
from support.node_peers import ORTHANC, NodeProcess, Orthanc, free_port, wait_for, wait_port, write_node_config

from cxr_triage.dicom_node.tools.film_to_dicom import films_to_study

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
TOKEN = "orthanc-stow-token-0123456789"

pytestmark = pytest.mark.skipif(not (ORTHANC.exists() and DICOMWEB_PLUGIN.exists()),
                                reason="Orthanc or its DICOMweb plugin is not installed (apt install orthanc-dicomweb)")


def dicomweb_orthanc(work: Path, node_port: int, web_port: int) -> Orthanc:
    """Orthanc with the DICOMweb plugin, knowing the node as the DICOMweb server ``triage``."""
    return Orthanc(work, node_port=node_port, extra={
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": {"triage": {
            "Url": f"http://127.0.0.1:{web_port}/dicomweb/",
            "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"}}}},
    })


@pytest.mark.slow
def test_orthanc_pushes_over_stow_rs_and_receives_the_result(tmp_path: Path, model_path: Path,
                                                             shared_data: Path) -> None:
    pngs = sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))[10:12]
    files = films_to_study(pngs, tmp_path / "study", sop_class="DX_PRES", transfer_syntax_uid=U.JPEGLosslessSV1)
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    port, web_port = free_port(), free_port()
    orthanc = dicomweb_orthanc(tmp_path / "orthanc", port, web_port)
    cfg = write_node_config(tmp_path / "node.toml", port, model_path,
                            delivery={"destinations": [f"dicomweb:http://127.0.0.1:{orthanc.http_port}/dicom-web"]},
                            web={"enabled": True, "host": "127.0.0.1", "port": web_port, "token": TOKEN})
    node = NodeProcess(cfg, port)
    with orthanc, node:
        wait_port(web_port)
        for f in files:
            orthanc.post("/instances", f.read_bytes())
        (study_id,) = orthanc.get("/studies")
        orthanc.post("/dicom-web/servers/triage/stow", {"Resources": [study_id], "Synchronous": True})

        def received() -> Any:
            rows = [s for s in node.status()["studies"] if s["study_uid"] == study_uid]
            return rows[0] if rows and rows[0]["n_instances"] == len(files) else None
        wait_for(received, 60, 0.5, "the study received over STOW-RS")

        def sr_in_study() -> Any:
            return orthanc.post("/tools/find", {"Level": "Instance", "Expand": True,
                                                "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}})
        (sr,) = wait_for(sr_in_study, 90, 0.5, "the result SR in Orthanc over STOW-RS")
        tags = orthanc.get(f"/instances/{sr['ID']}/simplified-tags")
        assert tags["StudyInstanceUID"] == study_uid and tags["CompletionFlag"] == "COMPLETE"
        assert orthanc.get("/statistics")["CountStudies"] == 1              # the same study

        def delivered() -> Any:
            (row,) = [s for s in node.status()["studies"] if s["study_uid"] == study_uid]
            return row if row["delivery_status"] == "delivered" else None
        row = wait_for(delivered, 30, 0.5, "delivery recorded")
        assert row["decision"] in ("suspicious", "likely_normal")
