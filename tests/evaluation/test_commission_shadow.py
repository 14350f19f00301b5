"""Shadow mode with real peers: the node triages and records everything, the PACS (a listening
dcmtk storescp) receives nothing, a shadow destination receives every result; the shadow
results then reconcile against radiologist outcomes — a site's silent evaluation before go-live."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from support.commission_support import as_dicom, film_pool
from support.node_peers import StoreSCP, free_port, storescu, wait_for

from cxr_triage.config import load_config
from cxr_triage.evaluation import reconcile as rc


@pytest.fixture
def studies(shared_data: Path, tmp_path: Path) -> list[tuple[str, int, list[Path]]]:
    """Three two-film studies of real adult films, as DICOM files: (study uid, label, files)."""
    pool = film_pool(shared_data)
    picks = [pool[i] for i in (3, 17, 101, 240, 388, 612)]
    out, d = [], tmp_path / "films"
    d.mkdir()
    for a, b in zip(picks[0::2], picks[1::2]):
        study = generate_uid()
        files = []
        for f in (a, b):
            ds = as_dicom(f)
            ds.StudyInstanceUID = study
            path = d / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        out.append((study, max(a.label, b.label), files))
    return out


def _run_node(cfg, files: list[Path]):
    from cxr_triage.dicom_node.service.node import Node

    node = Node(cfg).start()
    try:
        sent = storescu(files, node.port)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: len(node.queries.list_studies(state="triaged")) == len(files) // 2, 60, what="triage")
        assert node.wait_idle(60)
        return node.queries.list_studies(state="triaged")
    finally:
        node.stop(timeout_s=10)


def _cfg(tmp_path: Path, model: Path, **over):
    node = {"host": "127.0.0.1", "port": free_port(), "state_dir": str(tmp_path / "state"),
            "quiet_period_s": 0.5, **over.pop("node", {})}
    return load_config(None, environ={}).replace(
        node=node, inference={"model_path": str(model), "threads": 1}, web={"enabled": False},
        delivery={"retry_initial_s": 0.5, "retry_max_s": 2.0, "summary_image": False, **over.pop("delivery", {})})


def test_shadow_mode_sends_nothing_to_the_pacs_only_to_the_shadow_destination(
        tmp_path: Path, tiny_model: Path, studies: list) -> None:
    files = [f for _, _, fs in studies for f in fs]
    with StoreSCP(tmp_path / "pacs", free_port(), "PACS") as pacs, \
            StoreSCP(tmp_path / "shadow", free_port(), "SHADOW") as shadow:
        cfg = _cfg(tmp_path, tiny_model, node={"shadow_mode": True},
                   delivery={"destinations": [pacs.destination], "shadow_destinations": [shadow.destination]})
        triaged = _run_node(cfg, files)
        assert {s["study_uid"] for s in triaged} == {s for s, _, _ in studies}
        assert all(s["decision"] in ("suspicious", "likely_normal", "not_assessable") for s in triaged)
        got = wait_for(lambda: shadow.received() if len(shadow.received()) == len(studies) else None, 30,
                       what="shadow results")
        assert {str(ds.StudyInstanceUID) for ds in got} == {s for s, _, _ in studies}
        assert all(ds.Modality == "SR" for ds in got)
        assert pacs.received() == [], "shadow mode must send nothing to the PACS"
        assert not any((tmp_path / "state" / "outbox").rglob("*.dcm"))

        # the silent evaluation: the shadow destination's SRs against the radiologists' reads
        outcomes = tmp_path / "outcomes.csv"
        with outcomes.open("w", newline="") as fh:
            csv.writer(fh).writerows([["study_instance_uid", "label"],
                                      *[[s, "abnormal" if y else "normal"] for s, y, _ in studies]])
        key, outs = rc.read_outcomes(outcomes)
        rec = rc.reconcile(key, outs, rc.live_from_srs(shadow.dir))
        assert rec.n_matched == len(studies)
        decided = {s["study_uid"]: s["decision"] for s in triaged}
        flagged_abnormal = sum(1 for s, y, _ in studies if y and decided[s] == "suspicious")
        assert rec.figures["tp"] == flagged_abnormal


def test_without_shadow_mode_the_same_setup_delivers_to_the_pacs(tmp_path: Path, tiny_model: Path,
                                                                 studies: list) -> None:
    """The control: the PACS peer above was reachable and would have received the results."""
    files = [f for _, _, fs in studies[:1] for f in fs]
    with StoreSCP(tmp_path / "pacs", free_port(), "PACS") as pacs, \
            StoreSCP(tmp_path / "shadow", free_port(), "SHADOW") as shadow:
        cfg = _cfg(tmp_path, tiny_model,
                   delivery={"destinations": [pacs.destination], "shadow_destinations": [shadow.destination]})
        _run_node(cfg, files)
        got = wait_for(lambda: pacs.received(), 30, what="PACS result")
        assert [str(ds.StudyInstanceUID) for ds in got] == [studies[0][0]]
        assert shadow.received() == []
