"""Issue 23 class 2, deflate bombs: a ~1.4 MB Deflated Explicit VR Little Endian data set that
inflates to 1.2 GB (a private OB element of zeros) must cost neither the node nor ``predict``
more than a few MB, whoever reads it.

- the node (``cxr-triage serve``, a subprocess) refuses it with 0xC000 and quarantines it, its
  peak RSS (``VmHWM``) stays within 64 MB of what a normal film took, and it keeps serving;
- the worker's read of a bomb already in the spool (received before the check existed) makes it
  not assessable (undecodable) with the reason, without inflating it;
- ``cxr-triage predict`` reports it not assessable (undecodable, "deflate bomb"), exit 0, with a
  peak RSS within 64 MB of predict on a normal film;
- a deflated data set under the limit is read as before (triaged).

The figures (peak RSS before and after, MB) are printed: ``pytest -s`` shows them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, _config
from support.film_faults import deflate_bomb, nih_film
from support.node_peers import NODE_AET, NodeProcess, echo, free_port, storescu, wait_for, write_node_config

from cxr_triage.dicom_node.delivery.scu import associate
from cxr_triage.dicom_node.receive.statuses import CANNOT_UNDERSTAND
from cxr_triage.inference.deflated import DEFAULT_MAX_INFLATED_BYTES

pytestmark = pytest.mark.reliability

BOMB_ZEROS = 1_200_000_000
#: the most a bomb may add to a process's peak RSS over a normal film's
SLACK_MB = 64


@pytest.fixture(scope="module")
def bomb(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = deflate_bomb(nih_film(shared_data), tmp_path_factory.mktemp("bomb") / "bomb.dcm", BOMB_ZEROS)
    assert path.stat().st_size < 2_000_000
    return path


@pytest.fixture(scope="module")
def small_deflated(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A deflated film with a 1 MB private element: under the limit, read as before."""
    return deflate_bomb(nih_film(shared_data, 1), tmp_path_factory.mktemp("deflated") / "ok.dcm", 1_000_000)


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _send_file(port: int, path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """The file's bytes as they are (pynetdicom's chunked sending from a path, never decoding it)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="BOMBSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1.99")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    assoc = associate(ae, "127.0.0.1", port, ae_title=NODE_AET)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        return int(status.Status)
    finally:
        assoc.release()


def test_the_node_refuses_a_deflate_bomb_in_bounded_memory(bomb: Path, small_deflated: Path, tiny_model: Path,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    node = NodeProcess(write_node_config(tmp_path / "node.toml", port, tiny_model), port).start()
    try:
        assert node.proc is not None
        idle = _peak_mb(node.proc.pid)
        sent = storescu([small_deflated], port, extra=["-xd"])
        assert sent.returncode == 0, sent.stderr
        study = str(dcmread(small_deflated, stop_before_pixels=True).StudyInstanceUID)
        wait_for(lambda: any(s["study_uid"] == study and s["state"] == "triaged"
                             for s in node.status().get("studies", [])), 120, what="the deflated film triaged")
        normal = _peak_mb(node.proc.pid)
        start = time.monotonic()
        assert _send_file(port, bomb, monkeypatch) == CANNOT_UNDERSTAND
        seconds = time.monotonic() - start
        after = _peak_mb(node.proc.pid)
        print(f"\nnode peak RSS: idle {idle:.0f} MB, after a deflated film {normal:.0f} MB, "
              f"after the bomb {after:.0f} MB (refused in {seconds:.1f} s)")
        assert after - normal < SLACK_MB, (idle, normal, after)
        quarantined = list((tmp_path / "state" / "quarantine").rglob("*"))
        assert any("deflate bomb" in p.read_text(errors="replace") for p in quarantined
                   if p.is_file() and p.stat().st_size < 100_000), [p.name for p in quarantined]
        assert echo(port, "BOMBSCU", NODE_AET)   # still serving
    finally:
        node.stop()


def _predict_peak(path: Path, model: Path) -> tuple[dict, float]:
    """One ``predict --json`` in a fresh interpreter: (its result, its peak RSS in MB)."""
    code = ("import resource, sys; from cxr_triage.cli import main; rc = main(sys.argv[1:]); "
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "predict", "--json", "--model", str(model), str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    result = json.loads(next(line for line in lines if line.startswith("{")))
    peak = int(next(line for line in lines if line.startswith("PEAK")).split()[1]) / 1024
    return result, peak


def test_predict_reports_a_deflate_bomb_in_bounded_memory(bomb: Path, small_deflated: Path,
                                                          tiny_model: Path) -> None:
    normal, normal_peak = _predict_peak(small_deflated, tiny_model)
    assert normal["decision"] in ("likely_normal", "suspicious"), normal
    result, peak = _predict_peak(bomb, tiny_model)
    print(f"\npredict peak RSS: a deflated film {normal_peak:.0f} MB, the bomb {peak:.0f} MB")
    assert result["decision"] == "not_assessable" and result["reason"] == "undecodable", result
    assert "deflate bomb" in result["reason_detail"]
    assert peak - normal_peak < SLACK_MB


def test_the_worker_read_of_a_spooled_bomb_is_bounded(bomb: Path, tmp_path: Path) -> None:
    """A bomb already in the spool (received before the check): the worker's read refuses it."""
    from cxr_triage.dicom_node.store.jobs import InstanceRecord
    from cxr_triage.dicom_node.worker.stages import StudyJob, read_instances

    inst = InstanceRecord(sop_instance_uid="1.2.3.4", study_uid="1.2.3", series_uid="1.2.3.5",
                          sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", transfer_syntax="1.2.840.10008.1.2.1.99",
                          path=str(bomb), size=bomb.stat().st_size, calling_ae="X", received_at=0.0)
    job = StudyJob(study_uid="1.2.3", instances=[inst])
    read_instances(None, job)  # type: ignore[arg-type]  # the read stage uses no context
    ((_, ds, error),) = job.read
    assert ds is None and "deflate bomb" in error and str(DEFAULT_MAX_INFLATED_BYTES) in error
