"""`cxr-triage status` marks a node whose heartbeat is older than a lease (issue 25)."""

from __future__ import annotations

import time

from cxr_triage.dicom_node.service.cli import _stale


def test_a_node_without_a_recent_heartbeat_is_marked_stale() -> None:
    now = time.time()
    assert _stale(now - 5, lease_s=30) == ""
    text = _stale(now - 95, lease_s=30)
    assert text.startswith("  STALE: no heartbeat for 9") and "lease 30 s" in text
    assert _stale(None, lease_s=30) == ""
