"""Append-only audit log: one JSON line per received/sent object and per security event.

Event ids follow IHE ATNA / DICOM PS3.15 (DCM codes) so a site can map the lines into its
audit repository. No PHI: UIDs, AE titles and hosts only. The file is opened with
``O_APPEND`` and never rewritten. It is bounded by size: once ``audit.jsonl`` would grow past
``max_bytes`` it is renamed ``audit.jsonl.1`` (the older ones shift to ``.2``, ``.3``...) and
a new one is started; only ``keep`` rotated files are kept, the oldest is removed.
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
EXPORT = ("110106", "Export")                   # a result reported to the RIS (HL7)
PATIENT_RECORD = ("110110", "Patient Record")   # a radiologist's assessment of an AI result recorded
SECURITY_ALERT = ("110113", "Security Alert")

# RFC 3881 / ATNA EventOutcomeIndicator
SUCCESS = 0
MINOR_FAILURE = 4
SERIOUS_FAILURE = 8


def rotated(path: Path, n: int) -> Path:
    """The ``n``-th rotated file of an audit log (1: the most recent)."""
    return path.with_name(f"{path.name}.{n}")


class AuditLog:
    """Thread-safe JSON-lines writer; failures to audit are reported, never raised.

    ``max_bytes`` (0: unbounded) and ``keep``: size-based rotation, see the module docstring.
    """

    def __init__(self, path: Path, max_bytes: int = 0, keep: int = 10):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.keep = max(1, keep)
        self._lock = threading.Lock()
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)

    def _rotate(self) -> None:
        """Under the lock: audit.jsonl -> .1 -> .2 ...; the oldest beyond ``keep`` removed."""
        os.close(self._fd)
        self._fd = -1
        try:
            rotated(self.path, self.keep).unlink(missing_ok=True)
            for n in range(self.keep - 1, 0, -1):
                if rotated(self.path, n).exists():
                    os.replace(rotated(self.path, n), rotated(self.path, n + 1))
            os.replace(self.path, rotated(self.path, 1))
        finally:
            self._fd = self._open()
            self._size = os.fstat(self._fd).st_size

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
            if self._fd < 0:
                return
            try:
                if self.max_bytes and self._size and self._size + len(data) > self.max_bytes:
                    self._rotate()
                os.write(self._fd, data)
                self._size += len(data)
            except OSError:  # disk full: the DIMSE status already tells the sender
                pass

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def read_audit(path: Path, rotated_files: bool = True) -> list[dict[str, Any]]:
    """All events, oldest first, the rotated files' included unless ``rotated_files`` is
    False (for tests, the status command and the web view)."""
    path = Path(path)
    out: list[dict[str, Any]] = []
    files = [path]
    if rotated_files:
        older = sorted((p for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit()),
                       key=lambda p: int(p.suffix[1:]), reverse=True)
        files = older + files
    for f in files:
        try:
            text = f.read_text()
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    return out
