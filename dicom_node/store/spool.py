"""Durable files under the node's state dir: received instances, results, quarantine, outbox.

Every file is written the same way — a temporary ``.<name>.<random>.part`` of its own in the
target folder, fsync, atomic rename, fsync of the folder — so concurrent writers of one file
never share a temporary file, and a crash leaves either the whole file or a ``.part`` that
:meth:`Spool.sweep_partials` removes at start. A received instance arrives as a file already
(pynetdicom streams the C-STORE data set to ``<spool>/.incoming/``, see
:mod:`~cxr_triage.dicom_node.receive.scp`) and is *moved* into place (:meth:`Spool.adopt`).
Nothing here touches the job store; the caller records a file only after it is in place.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^0-9A-Za-z._-]")
PART = ".part"               # the suffix of every temporary file (swept after a crash)
INCOMING = ".incoming"       # <spool>/.incoming/: C-STORE data sets being received
_CHUNK = 1 << 20


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


def _make_parent(path: Path) -> None:
    new_dir = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    if new_dir:
        fsync_dir(path.parent.parent)


def _temp_beside(path: Path) -> tuple[int, Path]:
    """A new temporary file of this writer's own next to ``path`` (O_EXCL, mode 0640)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name[:80]}.", suffix=PART, dir=path.parent)
    os.fchmod(fd, 0o640)
    return fd, Path(name)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` durably: a temporary file of this call's own in the same
    folder, fsync, atomic rename, fsync folder. Concurrent writers of one path each rename a
    complete file (the last one wins); none fails because of another.

    Raises OSError (disk full, permissions...) with no ``.part`` left behind.
    """
    path = Path(path)
    _make_parent(path)
    fd, part = _temp_beside(path)
    try:
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
        _unlink_quietly(part)
        raise
    return path


def move_atomic(src: Path, path: Path) -> Path:
    """Move the complete file ``src`` to ``path`` durably (fsync, rename, fsync folder).

    On one file system this is a rename: nothing is copied. Across file systems the file is
    copied in 1 MiB chunks to a temporary file beside ``path`` and renamed; ``src`` is then
    removed. Raises OSError with no ``.part`` left behind (``src`` is left to the caller).
    """
    src, path = Path(src), Path(path)
    _make_parent(path)
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)                              # the data is on disk before the rename
    finally:
        os.close(fd)
    try:
        os.replace(src, path)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        fd, part = _temp_beside(path)
        try:
            with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
                shutil.copyfileobj(fin, fout, _CHUNK)
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(part, path)
        except BaseException:
            _unlink_quietly(part)
            raise
        _unlink_quietly(src)
    fsync_dir(path.parent)
    return path


def dataset_offset(fp: IO[bytes]) -> int:
    """Where the data set starts in a DICOM file: after the 128-byte preamble, ``DICM`` and
    the File Meta Information group (explicit VR little endian, group 0002); 0 for a bare
    data set. Leaves ``fp`` at that offset."""
    fp.seek(128)
    if fp.read(4) != b"DICM":
        fp.seek(0)
        return 0
    pos = 132
    while True:
        head = fp.read(8)
        if len(head) < 8 or struct.unpack("<H", head[:2])[0] != 0x0002:
            break
        if head[4:6] in (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                         b"UR", b"UT", b"UV"):
            extra = fp.read(4)
            if len(extra) < 4:
                break
            pos += 12 + struct.unpack("<I", extra)[0]
        else:
            pos += 8 + struct.unpack("<H", head[6:8])[0]
        fp.seek(pos)
    fp.seek(pos)
    return pos


def dataset_sha256(path: Path) -> str:
    """SHA-256 (hex) of the data set as the peer sent it: the file without the preamble and
    File Meta Information the receiver adds, read in 1 MiB chunks. The same instance sent
    again gives the same digest whichever software wrote the file meta."""
    h = hashlib.sha256()
    with open(path, "rb") as fp:
        dataset_offset(fp)
        while chunk := fp.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class StateDirs:
    """The node's state dir layout (see docs/operations.md, 'State dir')."""

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
    """Received instances as ``<spool>/<study uid>/<sop uid>.dcm`` (bytes as received).

    A changed instance (same SOP Instance UID, other content) is kept beside the first one
    as ``<sop uid>.<sha-256 prefix>.dcm`` (:meth:`version_path_for`); nothing is overwritten.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.incoming = self.root / INCOMING
        self.incoming.mkdir(exist_ok=True)

    def path_for(self, study_uid: str, sop_uid: str) -> Path:
        return self.root / safe_name(study_uid) / f"{safe_name(sop_uid)}.dcm"

    def version_path_for(self, study_uid: str, sop_uid: str, sha256: str) -> Path:
        """Where another content of an instance goes (the first keeps :meth:`path_for`)."""
        return self.root / safe_name(study_uid) / f"{safe_name(sop_uid)}.{sha256[:16]}.dcm"

    def store(self, study_uid: str, sop_uid: str, data: bytes) -> Path:
        """Durably store one instance; raises OSError when it cannot (caller answers A700)."""
        return write_atomic(self.path_for(study_uid, sop_uid), data)

    def adopt(self, src: Path, dest: Path) -> Path:
        """Move a received file (complete, in ``.incoming/``) to ``dest`` durably."""
        return move_atomic(src, dest)

    def incoming_file(self) -> tuple[IO[bytes], Path]:
        """A new ``.incoming/.recv-*.part`` file, open for writing (removed by the sweep
        when a crash leaves it)."""
        self.incoming.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".recv-", suffix=PART, dir=self.incoming)
        os.fchmod(fd, 0o640)
        return os.fdopen(fd, "wb"), Path(name)

    def sweep_partials(self, min_age_s: float = 0.0) -> int:
        """Remove ``.part`` files left by a crash mid-write or mid-receive (never
        acknowledged): every writer's temporary file and ``.incoming/``. ``min_age_s``: keep
        files written to in the last so many seconds (a spool shared by several nodes holds
        other nodes' files in progress)."""
        n = 0
        cutoff = time.time() - min_age_s
        for part in self.root.rglob(f"*{PART}"):
            try:
                if min_age_s and part.stat().st_mtime > cutoff:
                    continue
                part.unlink()
                n += 1
            except OSError:
                pass
        return n

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.glob("*/*.dcm") if p.parent.name != INCOMING)


class Quarantine:
    """Malformed or undecodable input kept for inspection: ``<id>.dcm`` plus ``<id>.json``.

    Bounded: after each entry, the oldest entries are removed until at most ``max_files``
    entries and ``max_bytes`` bytes remain (0: no bound); the newest entry is always kept.
    """

    def __init__(self, root: Path, max_files: int = 0, max_bytes: int = 0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def _new_id(self) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        return f"{stamp}_{time.time_ns() % 10**9:09d}_{uuid.uuid4().hex[:8]}"

    def put(self, data: bytes | None, reason: str, **info: Any) -> Path:
        """Keep ``data`` (may be None when nothing readable arrived) with why and from whom.

        Best effort: quarantine must never make the node fail, so errors are swallowed and
        the intended path is still returned for the log.
        """
        qid = self._new_id()
        path = self.root / f"{qid}.dcm"
        try:
            if data is not None:
                write_atomic(path, data)
        except OSError:
            pass
        self._finish(qid, reason, info)
        return path

    def put_file(self, src: Path | None, reason: str, **info: Any) -> Path:
        """Like :meth:`put`, for a received file: it is moved here, not read into memory."""
        qid = self._new_id()
        path = self.root / f"{qid}.dcm"
        try:
            if src is not None:
                move_atomic(src, path)
        except OSError:
            pass
        self._finish(qid, reason, info)
        return path

    def _finish(self, qid: str, reason: str, info: dict[str, Any]) -> None:
        meta = {"id": qid, "reason": reason, "time": time.time(), **info}
        try:
            write_atomic(self.root / f"{qid}.json", json.dumps(meta, default=str).encode())
        except OSError:
            pass
        self.enforce_bounds(keep=qid)

    def enforce_bounds(self, keep: str | None = None) -> int:
        """Remove the oldest entries beyond ``max_files`` / ``max_bytes``; returns how many."""
        if not self.max_files and not self.max_bytes:
            return 0
        with self._lock:
            entries: dict[str, list[tuple[Path, os.stat_result]]] = {}
            for p in self.root.iterdir():
                if p.name.startswith(".") or p.suffix not in (".dcm", ".json"):
                    continue
                try:
                    entries.setdefault(p.stem, []).append((p, p.stat()))
                except OSError:
                    continue
            order = sorted(entries, key=lambda q: (min(st.st_mtime for _, st in entries[q]), q))
            total = sum(st.st_size for files in entries.values() for _, st in files)
            count, removed = len(order), 0
            for qid in order:
                over = (self.max_files and count > self.max_files) or (
                    self.max_bytes and total > self.max_bytes)
                if not over:
                    break
                if qid == keep:
                    continue
                for p, st in entries[qid]:
                    try:
                        p.unlink()
                    except OSError:
                        continue
                    total -= st.st_size
                count -= 1
                removed += 1
        if removed:
            log.info("quarantine bounded: oldest entries removed",
                     extra={"removed": removed, "entries": count, "bytes": total})
        return removed

    def entries(self) -> list[dict[str, Any]]:
        out = []
        for meta in sorted(self.root.glob("*.json")):
            try:
                out.append(json.loads(meta.read_text()))
            except (OSError, ValueError):
                continue
        return out
