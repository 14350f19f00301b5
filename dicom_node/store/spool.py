"""Durable files under the node's state dir: received instances, results, quarantine, outbox.

Every file is written the same way — ``<name>.part``, fsync, atomic rename, fsync of the
folder — so a crash leaves either the whole file or a ``.part`` that :meth:`Spool.sweep_partials`
removes at start. Nothing here touches the job store; the caller records a file only after
:func:`write_atomic` returned.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SAFE = re.compile(r"[^0-9A-Za-z._-]")


def safe_name(text: str, limit: int = 96) -> str:
    """A UID (or any string) as a file-name component; never a path separator or ``..``."""
    name = _SAFE.sub("_", text.strip())[:limit].strip(".")
    return name or "unnamed"


def fsync_dir(path: Path) -> None:
    """Make a rename/creation inside ``path`` durable (POSIX needs the folder synced too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` durably: ``.part``, fsync, rename, fsync folder.

    Raises OSError (disk full, permissions...) with no ``.part`` left behind.
    """
    path = Path(path)
    new_dir = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    if new_dir:
        fsync_dir(path.parent.parent)
    part = path.with_name(path.name + ".part")
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(part, path)
        fsync_dir(path.parent)
    except BaseException:
        try:
            part.unlink()
        except OSError:
            pass
        raise
    return path


@dataclass(frozen=True)
class StateDirs:
    """The node's state dir layout (see README, 'Running the node')."""

    root: Path

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def queue_db(self) -> Path:
        return self.root / "queue.sqlite3"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.jsonl"

    def create(self) -> "StateDirs":
        for p in (self.root, self.spool, self.results, self.outbox, self.quarantine):
            p.mkdir(parents=True, exist_ok=True)
        return self


class Spool:
    """Received instances as ``<spool>/<study uid>/<sop uid>.dcm`` (raw bytes as received)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, study_uid: str, sop_uid: str) -> Path:
        return self.root / safe_name(study_uid) / f"{safe_name(sop_uid)}.dcm"

    def store(self, study_uid: str, sop_uid: str, data: bytes) -> Path:
        """Durably store one instance; raises OSError when it cannot (caller answers A700)."""
        return write_atomic(self.path_for(study_uid, sop_uid), data)

    def sweep_partials(self) -> int:
        """Remove ``.part`` files left by a crash mid-write (never acknowledged)."""
        n = 0
        for part in self.root.rglob("*.part"):
            try:
                part.unlink()
                n += 1
            except OSError:
                pass
        return n

    def files(self) -> list[Path]:
        return sorted(self.root.glob("*/*.dcm"))


class Quarantine:
    """Malformed or undecodable input kept for inspection: ``<id>.dcm`` plus ``<id>.json``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes | None, reason: str, **info: Any) -> Path:
        """Keep ``data`` (may be None when nothing readable arrived) with why and from whom.

        Best effort: quarantine must never make the node fail, so errors are swallowed and
        the intended path is still returned for the log.
        """
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        qid = f"{stamp}_{uuid.uuid4().hex[:12]}"
        meta = {"id": qid, "reason": reason, "time": time.time(), **info}
        path = self.root / f"{qid}.dcm"
        try:
            if data is not None:
                write_atomic(path, data)
            write_atomic(self.root / f"{qid}.json", json.dumps(meta, default=str).encode())
        except OSError:
            pass
        return path

    def entries(self) -> list[dict[str, Any]]:
        out = []
        for meta in sorted(self.root.glob("*.json")):
            try:
                out.append(json.loads(meta.read_text()))
            except (OSError, ValueError):
                continue
        return out
