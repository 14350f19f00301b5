"""A sender killed mid-C-STORE (issue 23, "Also"): its partial data is removed at once and the
cut-off transfer audited; the node keeps serving.

dcmtk's storescu sends a large instance to the node and is killed (SIGKILL) while the data set
streams into ``spool/.incoming/``: the connection closes, the partial file must be gone within
a couple of seconds (not after the network time-out) with an audit record, and nothing of it
may reach the study queue.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from support.node_peers import DCMTK, NODE_AET, echo, wait_for
from support.receive_support import instance_of_size

from cxr_triage.config import load_config
from cxr_triage.dicom_node.service.node import Node
from cxr_triage.dicom_node.store.audit import read_audit

GONE_WITHIN_S = 3.0


def _partial(incoming: Path) -> list[Path]:
    return [p for p in incoming.glob(".recv-*") if p.is_file() and p.stat().st_size > 0]


def test_a_sender_killed_mid_c_store_leaves_no_partial_file(tmp_path: Path, tiny_model: Path) -> None:
    big = instance_of_size(tmp_path / "big.dcm", 160_000_000)
    cfg = load_config(environ={}).replace(
        node={"host": "127.0.0.1", "port": 0, "state_dir": str(tmp_path / "state"),
              "network_timeout_s": 30.0},
        inference={"model_path": str(tiny_model)}, web={"enabled": False})
    node = Node(cfg).start()
    try:
        incoming = node.spool.incoming
        sender = subprocess.Popen([str(DCMTK / "storescu"), "-aet", "KILLED", "-aec", NODE_AET,
                                   "127.0.0.1", str(node.port), str(big)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: _partial(incoming) or sender.poll() is not None, 60, 0.002, "a partial file")
            assert sender.poll() is None, "the transfer finished before it could be cut off"
            sender.send_signal(signal.SIGKILL)
        finally:
            sender.wait()
        killed_at = time.monotonic()
        wait_for(lambda: not _partial(incoming), 30, 0.05, "the partial file removed")
        gone_s = time.monotonic() - killed_at
        cut = [e for e in read_audit(node.dirs.audit_log) if "cut off" in str(e.get("detail", ""))]
        assert echo(node.port, "AFTER", NODE_AET)                  # still serving
        assert node.queries.list_studies() == []                    # nothing of it was queued
    finally:
        node.stop(timeout_s=5)
    assert gone_s < GONE_WITHIN_S, gone_s
    assert len(cut) == 1 and cut[0]["calling_ae"] == "KILLED" and cut[0]["size"] > 0, cut
