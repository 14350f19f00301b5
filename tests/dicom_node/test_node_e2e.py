"""The node as it runs in a department: ``cxr-triage serve`` as a subprocess, dcmtk peers.

storescu sends the shared sample DICOMs and generated multi-image studies in several transfer
syntaxes; a storescp destination must receive exactly one result per study, in the same
study. A destination that is down gets its result once up, across a crash and restart.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom import uid as U
from support.node_peers import NodeProcess, StoreSCP, free_port, storescu, wait_for, write_node_config

from cxr_triage.dicom_node.store.audit import read_audit
from cxr_triage.dicom_node.tools.film_to_dicom import films_to_study

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."

# (SOP class, transfer syntax, films) per generated study
GENERATED = [
    ("CR", U.JPEGLosslessSV1, 2),
    ("DX_PRES", U.JPEG2000Lossless, 2),
    ("DX_PROC", U.RLELossless, 1),
    ("SC", U.JPEGLSLossless, 1),
    ("DX_PRES", U.ExplicitVRLittleEndian, 3),
]


@pytest.fixture(scope="module")
def generated_studies(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> list[list[Path]]:
    pngs = sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))
    out, k = [], 0
    base = tmp_path_factory.mktemp("studies")
    for i, (sop, ts, n) in enumerate(GENERATED):
        out.append(films_to_study(pngs[k:k + n], base / f"study{i}", sop_class=sop,
                                  transfer_syntax_uid=ts, bits_stored=12 if ts != U.JPEGLSLossless else 8))
        k += n
    return out


def _study_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _results_by_study(dest: StoreSCP) -> Counter:
    return Counter(str(ds.StudyInstanceUID) for ds in dest.received() if str(ds.SOPClassUID).startswith(SR_PREFIX))


@pytest.mark.slow
def test_storescu_to_node_to_storescp(tmp_path: Path, model_path: Path, sample_dicoms: dict[str, Path],
                                      generated_studies: list[list[Path]]) -> None:
    dest = StoreSCP(tmp_path / "received", free_port()).start()
    port = free_port()
    cfg = write_node_config(tmp_path / "node.toml", port, model_path,
                            node={"allowed_calling_aets": ["STORESCU"]},
                            delivery={"destinations": [dest.destination], "summary_image": True})
    node = NodeProcess(cfg, port)
    try:
        node.start()
        files = list(sample_dicoms.values()) + [f for study in generated_studies for f in study]
        sent = storescu(files, port)
        assert sent.returncode == 0, sent.stderr
        studies = {_study_uid(f) for f in files}
        wait_for(lambda: set(_results_by_study(dest)) >= studies, 120, 0.5, "one SR per study")
        time.sleep(1.5)                                   # would a duplicate follow? (it must not)
        per_study = _results_by_study(dest)
        assert set(per_study) == studies and set(per_study.values()) == {1}, per_study
        srs = [ds for ds in dest.received() if str(ds.SOPClassUID).startswith(SR_PREFIX)]
        assert all(ds.Modality == "SR" for ds in srs)
        # summary images (one per triaged film) also land in the source study
        scs = [ds for ds in dest.received() if str(ds.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.7"]  # Secondary Capture
        assert {str(ds.StudyInstanceUID) for ds in scs} <= studies and scs
        # one delivery per object: each SR and each summary image
        objects = len(srs) + len(scs)
        rep = wait_for(lambda: (r := node.status())["counts"]["deliveries"].get("delivered") == objects
                       and r, 30, 0.5, "deliveries recorded")
        decisions = {s["study_uid"]: s["decision"] for s in rep["studies"]}
        assert set(decisions) == studies
        canine = _study_uid(sample_dicoms["highdicom_dx_canine_thorax_mono1"])
        assert decisions[canine] == "not_assessable"
        assert all(d in ("suspicious", "likely_normal") for uid, d in decisions.items() if uid != canine)
        assert rep["counts"]["deliveries"] == {"delivered": objects}
        assert rep["oldest_pending"] is None and rep["delivery_failures"] == []
        audit = read_audit(Path(rep["state_dir"]) / "audit.jsonl")
        received = {e["sop_instance_uid"] for e in audit if e.get("direction") == "received" and e["outcome"] == 0}
        assert received == {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        assert {e["sop_instance_uid"] for e in audit if e.get("direction") == "sent"} >= {
            str(ds.SOPInstanceUID) for ds in srs}
        # an unknown calling AE is refused by the running node
        refused = storescu(files[:1], port, aet="INTRUDER")
        assert refused.returncode != 0
        assert node.stop() == 0                            # SIGTERM: clean exit
        assert any(e.get("event_type_id") == "110121" for e in read_audit(Path(rep["state_dir"]) / "audit.jsonl"))
    finally:
        node.kill()
        dest.stop()


@pytest.mark.slow
def test_destination_down_then_up_across_a_crash(tmp_path: Path, model_path: Path,
                                                   generated_studies: list[list[Path]]) -> None:
    dest_port, port = free_port(), free_port()
    dest = StoreSCP(tmp_path / "received", dest_port)
    cfg = write_node_config(tmp_path / "node.toml", port, model_path, node={"quiet_period_s": 2.0},
                            delivery={"destinations": [dest.destination]})
    files = generated_studies[0] + generated_studies[2]
    studies = {_study_uid(f) for f in files}
    node = NodeProcess(cfg, port)
    try:
        node.start()
        assert storescu(files, port).returncode == 0
        node.kill()                                       # crash inside the quiet period
        node = NodeProcess(cfg, port).start()             # restart resumes the unfinished jobs
        wait_for(lambda: len(node.status()["delivery_failures"]) == len(studies), 60, 0.5,
                 "failed deliveries while the destination is down")
        rep = node.status()
        assert all(f["attempts"] >= 1 and f["state"] in ("pending", "sending") for f in rep["delivery_failures"])
        assert rep["oldest_pending"]["kind"] == "delivery"
        node.kill()                                       # crash again during the outage
        node = NodeProcess(cfg, port).start()
        dest.start()
        wait_for(lambda: set(_results_by_study(dest)) >= studies, 60, 0.5, "results after the outage")
        rep = wait_for(lambda: (r := node.status())["counts"]["deliveries"].get("delivered") == len(studies)
                       and r, 30, 0.5, "deliveries recorded")
        assert set(_results_by_study(dest).values()) == {1}
        assert rep["counts"]["deliveries"] == {"delivered": len(studies)}
        assert rep["delivery_failures"] == []
    finally:
        node.kill()
        dest.stop()
