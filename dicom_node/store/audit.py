"""Append-only audit log: one JSON line per received/sent object and per security event.

Event ids follow IHE ATNA / DICOM PS3.15 (DCM codes) so a site can map the lines into its
audit repository. No PHI: UIDs, AE titles and hosts only. The file is opened with
``O_APPEND`` and never rewritten.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

# (code, meaning) — DICOM PS3.16 CID 400/401 audit event ids and types.
APPLICATION_ACTIVITY = ("110100", "Application Activity")
APPLICATION_START = ("110120", "Application Start")
APPLICATION_STOP = ("110121", "Application Stop")
INSTANCES_TRANSFERRED = ("110104", "DICOM Instances Transferred")
INSTANCES_ACCESSED = ("110103", "DICOM Instances Accessed")
SECURITY_ALERT = ("110113", "Security Alert")

# RFC 3881 / ATNA EventOutcomeIndicator
SUCCESS = 0
MINOR_FAILURE = 4
SERIOUS_FAILURE = 8


class AuditLog:
    """Thread-safe JSON-lines writer; failures to audit are reported, never raised."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)

    def record(
        self,
        event: tuple[str, str],
        outcome: int = SUCCESS,
        event_type: tuple[str, str] | None = None,
        action: str = "E",
        **fields: Any,
    ) -> None:
        """Append one event. ``action``: C(reate) R(ead) U(pdate) D(elete) E(xecute)."""
        now = time.time()
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z",
            "event_id": event[0],
            "event": event[1],
            "action": action,
            "outcome": outcome,
        }
        if event_type:
            line["event_type_id"], line["event_type"] = event_type
        line.update({k: v for k, v in fields.items() if v is not None})
        data = (json.dumps(line, default=str) + "\n").encode()
        with self._lock:
            try:
                os.write(self._fd, data)
            except OSError:  # disk full: the DIMSE status already tells the sender
                pass

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def read_audit(path: Path) -> list[dict[str, Any]]:
    """All events (for tests, the status command and the web view)."""
    out: list[dict[str, Any]] = []
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
