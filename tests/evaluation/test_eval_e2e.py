"""Evaluation from result SRs: a folder of SRs (fast), and end-to-end through a running node
(`cxr-triage serve` as a subprocess; slow) whose delivered decisions must equal offline ones."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from support.node_peers import NODE_AET, NodeProcess, free_port, write_node_config

from cxr_triage.cli import main
from cxr_triage.contract.result import Decision, aggregate_study
from cxr_triage.dicom_node.delivery.scu import associate
from cxr_triage.evaluation import e2e, sources
from cxr_triage.inference.pipeline import Triager


def _manifest(shared_data: Path, out: Path, n_normal: int, n_abnormal: int, n_extra: int = 0) -> Path:
    """NIH films with absolute paths; ``n_extra`` from nih-extra (several under 16: gated)."""
    rows = []
    base = shared_data / "nih-cxr14"
    nih = list(csv.DictReader((base / "labels.csv").open()))
    pick = [r for r in nih if r["label"] == "normal"][:n_normal] + [r for r in nih if r["label"] == "abnormal"][:n_abnormal]
    rows += [{**r, "file": str(base / r["file"])} for r in pick]
    if n_extra:
        extra_base = shared_data / "nih-extra"
        extra = list(csv.DictReader((extra_base / "labels.csv").open()))
        children = [r for r in extra if float(r["age"]) < 16][:2]
        adults = [r for r in extra if float(r["age"]) >= 16][: n_extra - len(children)]
        rows += [{**r, "file": str(extra_base / r["file"]), "nodule_or_mass": "0"} for r in children + adults]
    cols = ["file", "label", "patient_id", "age", "sex", "view", "findings", "nodule_or_mass"]
    with out.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return out


def test_sr_folder_source(shared_data: Path, tiny_model: Path, tmp_path: Path) -> None:
    """SRs built by the node's own builder, read back by its reader, matched by SOP Instance UID."""
    from pydicom import dcmread

    from cxr_triage.dicom_node.results.sr import build_result_sr

    manifest = _manifest(shared_data, tmp_path / "m.csv", 3, 4, n_extra=3)
    films = sources.read_manifest(manifest)
    sent = e2e.wrap_films(films, tmp_path / "dicom")
    triager = Triager(model_path=tiny_model)
    srs = tmp_path / "srs"
    srs.mkdir()
    direct = []
    for s in sent:
        ds = dcmread(s.path)
        result = triager.triage_dataset(ds, str(s.path))
        direct.append(result)
        sr = build_result_sr(aggregate_study(s.study_instance_uid, [result]), [ds], triager.meta)
        sr.save_as(srs / f"{s.sop_instance_uid}.dcm", enforce_file_format=True)
    (srs / "not_dicom.txt").write_text("ignored")
    with_uids = tmp_path / "m_uids.csv"
    lines = manifest.read_text().splitlines()
    with_uids.write_text("\n".join([lines[0] + ",sop_instance_uid"]
                                   + [f"{line},{s.sop_instance_uid}" for line, s in zip(lines[1:], sent)]) + "\n")
    out = tmp_path / "out"
    assert main(["evaluate", str(with_uids), "--sr-dir", str(srs), "--n-boot", "100", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert [f["decision"] for f in rep["films"]] == [r.decision.value for r in direct]
    assert [f["score"] for f in rep["films"]] == pytest.approx([r.score for r in direct])
    assert rep["counts"]["not_assessable"]["by_reason"] == {"paediatric": 2}
    # thresholds as applied by the node (recorded in each SR)
    assert rep["thresholds"]["values"] == {"sens_0.98": 0.40}
    assert rep["as_decided"] is not None
    # without a UID column the SRs cannot be matched: a clear error
    assert main(["evaluate", str(manifest), "--sr-dir", str(srs), "--out", str(tmp_path / "o2")]) == 2


@pytest.mark.parametrize("chunked", [False, True], ids=["in_memory", "chunked"])
def test_result_receiver_keeps_the_whole_sr(chunked: bool, shared_data: Path, tiny_model: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness's SR receiver stores the SR as sent whether or not pynetdicom streams
    received data sets to a file: STORE_RECV_CHUNKED_DATASET is process-wide, and the node's
    own receiver turns it on (a node started earlier in the same process did, and the stored
    SRs were File Meta Information only)."""
    from pydicom import dcmread
    from pynetdicom import AE, _config
    from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation

    from cxr_triage.dicom_node.results.sr import build_result_sr

    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", chunked)
    films = sources.read_manifest(_manifest(shared_data, tmp_path / "m.csv", 1, 1))
    sent = e2e.wrap_films(films, tmp_path / "dicom")
    triager = Triager(model_path=tiny_model)
    srs, direct = [], []
    for s in sent:
        ds = dcmread(s.path)
        direct.append(triager.triage_dataset(ds, str(s.path)))
        srs.append((ds, build_result_sr(aggregate_study(s.study_instance_uid, [direct[-1]]), [ds], triager.meta)))
    with e2e.ResultReceiver(tmp_path / "srs", port=0) as rx:
        ae = AE(ae_title="CXRTRIAGE")
        ae.add_requested_context(srs[0][1].SOPClassUID)  # the SR class the builder writes (3D SR)
        ae.add_requested_context(DigitalXRayImageStorageForPresentation)
        assoc = associate(ae, rx.host, rx.port, ae_title=rx.ae_title)
        assert assoc.is_established
        try:
            for film, sr in srs:
                assert assoc.send_c_store(sr).Status == 0x0000
                assert assoc.send_c_store(film).Status == 0x0000  # acknowledged, not kept
        finally:
            assoc.release()
        assert rx.wait_for({s.study_instance_uid for s in sent}, 10.0) == set()
    assert rx.n_other == len(sent)
    parsed = sources.read_sr_folder(rx.folder)
    assert sorted(p.study_instance_uid for p in parsed) == sorted(s.study_instance_uid for s in sent)
    by_sop, _ = sources.sr_results_by_uid(parsed)
    assert [by_sop[s.sop_instance_uid].decision for s in sent] == [r.decision for r in direct]
    for _, sr in srs:
        kept = dcmread(rx.folder / str(sr.StudyInstanceUID) / f"{sr.SOPInstanceUID}.dcm")
        assert kept.Modality == "SR" and kept.ContentSequence == sr.ContentSequence


@pytest.mark.slow
def test_end_to_end_through_the_node_matches_offline(shared_data: Path, model_path: Path, tmp_path: Path) -> None:
    """>= 50 films wrapped into DICOM, sent to `cxr-triage serve`, SRs collected by the
    harness's receiver: every delivered decision equals offline inference on the same file."""
    manifest = _manifest(shared_data, tmp_path / "m.csv", 20, 30, n_extra=10)
    node_port, results_port = free_port(), free_port()
    (tmp_path / "node").mkdir()
    cfg = write_node_config(tmp_path / "node" / "cfg.toml", node_port, model_path,
                            delivery={"destinations": [f"EVALRESULTS@127.0.0.1:{results_port}"], "summary_image": True})
    out = tmp_path / "out"
    with NodeProcess(cfg, node_port) as node:
        rc = main(["evaluate", str(manifest), "--e2e", f"{NODE_AET}@127.0.0.1:{node_port}",
                   "--results-port", str(results_port), "--e2e-model", str(model_path),
                   "--e2e-timeout", "300", "--n-boot", "200", "--out", str(out)])
        assert rc == 0, node.tail()
    rep = json.loads((out / "report.json").read_text())
    e = rep["end_to_end"]
    assert e["n_sent"] == 60 and e["n_results"] == 60 and e["offline_compared"]
    assert e["n_differ"] == 0, e["differ"]
    assert e["max_score_difference"] < 1e-5
    # ... and with `evaluate --model` on the PNG films themselves (children aside: no header)
    v = e["vs_source_files"]
    assert v["n_differ"] == 0 and v["n_compared"] + v["n_gated_by_header"] == 60
    decisions = [f["decision"] for f in rep["films"]]
    children = sum(f.age is not None and f.age < 16 for f in sources.read_manifest(manifest))
    assert children >= 2
    assert rep["counts"]["not_assessable"]["by_reason"] == {"paediatric": children}   # the gate ran in the node
    assert decisions.count(Decision.NOT_ASSESSABLE.value) == children
    assert rep["counts"]["films"] == 60 and rep["auroc"] is not None
    assert "End-to-end through the node" in (out / "report.html").read_text()
