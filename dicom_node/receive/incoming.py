"""The file each incoming C-STORE data set streams into: ``<spool>/.incoming/``, size-limited.

pynetdicom streams each received data set to a file (see
:func:`cxr_triage.dicom_node.compat.stream_c_store_data_sets` for its protocol); for this
node's AE (:func:`stream_to_spool`) the file is an :class:`IncomingFile` in the spool's
incoming folder, on the spool's file system, so the C-STORE handler reads only the header and
*moves* the file into the spool: an instance is never held in memory whole. A transfer cut off
midway (the sender killed, the network cut) leaves nothing behind: each file is known by its
association, marked complete when pynetdicom has the whole message (EVT_DIMSE_RECV,
:func:`message_received`), and a file still incomplete when the connection closes
(EVT_CONN_CLOSE, :func:`cut_off`) is removed at once, for the handler to audit. Beside that the
file is removed when its object is collected, and the crash sweep removes ``.part`` leftovers. A data set larger than ``max_bytes`` stops being written
once over the limit (the handler answers 0xA700).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import weakref
from pathlib import Path
from typing import IO, Any

from pynetdicom import AE

from cxr_triage.dicom_node.compat import receiving_association, stream_c_store_data_sets
from cxr_triage.dicom_node.store.spool import PART, Spool

#: the end of the File Meta Information group length element (128-byte preamble, "DICM", tag)
_META_LENGTH_END = 144


class IncomingFile:
    """The file pynetdicom streams one C-STORE data set into (its ``NTF`` protocol: ``name``,
    ``write``, ``file.flush()``, ``close``). It never raises: pynetdicom writes from the DUL
    thread, where an exception would abort the association without a C-STORE response. A
    write error (disk full) or a data set over the size limit stops the writing (the file is
    emptied to give the space back) and is answered by the handler with 0xA700."""

    def __init__(self, folder: Path, max_bytes: int):
        self.max_bytes = max_bytes              # 0: no limit
        self.received = 0                       # bytes written by pynetdicom, kept or not
        self.over_limit = False
        self.error: OSError | None = None
        self.file = self                        # pynetdicom calls ``.file.flush()``
        self._fp: IO[bytes] | None = None
        self.complete = False                   # pynetdicom has the whole message
        # SHA-256 of the data set as it streams past (spool.dataset_sha256 of the finished
        # file, without reading it back): what follows the File Meta Information, whose
        # end the group length element (always first, as pydicom writes it) tells.
        self._sha = hashlib.sha256()
        self._head: bytearray | None = bytearray()
        self._meta_end: int | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, self.name = tempfile.mkstemp(prefix=".recv-", suffix=PART, dir=folder)
        except OSError as exc:                  # no room for even an empty file
            self.name = str(folder / f".recv-failed-{os.getpid()}-{id(self)}{PART}")
            self.error = exc
            return
        os.fchmod(fd, 0o640)
        self._fp = os.fdopen(fd, "wb")
        st = os.fstat(fd)
        # A transfer cut off midway leaves the message (and this object) behind: remove its
        # file when it is collected, unless the file was moved on (the inode differs then).
        weakref.finalize(self, _remove_if_same, self.name, st.st_dev, st.st_ino)

    @property
    def failed(self) -> bool:
        return self.over_limit or self.error is not None

    def sha256(self) -> str | None:
        """The data set's digest (hex), or None when the file meta was not as expected."""
        return self._sha.hexdigest() if self._head is None and self._meta_end else None

    def _digest(self, data: bytes) -> None:
        if self._head is None:
            if self._meta_end:
                self._sha.update(data)
            return
        self._head += data
        if self._meta_end is None and len(self._head) >= _META_LENGTH_END:
            h = self._head
            if h[128:132] == b"DICM" and h[132:138] == b"\x02\x00\x00\x00UL":
                self._meta_end = _META_LENGTH_END + int.from_bytes(h[140:144], "little")
            else:
                self._meta_end = 0              # unexpected: the handler reads the file
        if self._meta_end is not None and (self._meta_end == 0 or len(self._head) >= self._meta_end):
            if self._meta_end:
                self._sha.update(self._head[self._meta_end:])
            self._head = None

    def _stop(self) -> None:
        if self._fp is not None:
            try:
                self._fp.truncate(0)
            except (OSError, ValueError):
                pass

    def write(self, data: bytes) -> int:
        self.received += len(data)
        if self.failed or self._fp is None:
            return len(data)
        if self.max_bytes and self.received > self.max_bytes:
            self.over_limit = True              # keep counting, stop filling the disk
            self._stop()
            return len(data)
        try:
            n = self._fp.write(data)
        except OSError as exc:
            self.error = exc
            self._stop()
            return len(data)
        self._digest(data)
        return n

    def flush(self) -> None:
        if self._fp is None or self.failed:
            return
        try:
            self._fp.flush()
        except OSError as exc:
            self.error = exc
            self._stop()

    def close(self) -> None:
        if self._fp is not None:
            try:
                self._fp.close()
            except OSError:
                pass

    def discard(self) -> None:
        """A transfer cut off midway: close and remove the partial file."""
        self.close()
        try:
            os.unlink(self.name)
        except OSError:
            pass


def _remove_if_same(name: str, dev: int, ino: int) -> None:
    try:
        st = os.stat(name)
        if (st.st_dev, st.st_ino) == (dev, ino):
            os.unlink(name)
    except OSError:
        pass


# the receiving AEs of this process: (incoming folder, size limit); the files being written
_RECEIVERS: "weakref.WeakKeyDictionary[AE, tuple[Path, int]]" = weakref.WeakKeyDictionary()
_LIVE: "weakref.WeakValueDictionary[str, IncomingFile]" = weakref.WeakValueDictionary()
# the files of each receiving association not yet complete (DUL thread only: no lock needed)
_PENDING: "weakref.WeakKeyDictionary[Any, list[IncomingFile]]" = weakref.WeakKeyDictionary()


def _file_for(ae: AE) -> IncomingFile | None:
    """A new incoming file for a C-STORE to ``ae`` (None: not one of the node's AEs)."""
    target = _RECEIVERS.get(ae)
    if target is None:
        return None
    f = IncomingFile(*target)
    _LIVE[f.name] = f
    assoc = receiving_association()
    if assoc is not None:
        _PENDING.setdefault(assoc, []).append(f)
    return f


def message_received(event: Any) -> None:
    """EVT_DIMSE_RECV: the association's message is whole; its file is the handler's now."""
    for f in _PENDING.pop(event.assoc, []):
        f.complete = True


def cut_off(assoc: Any) -> list[int]:
    """EVT_CONN_CLOSE: remove the association's incomplete files at once; their sizes so far
    (bytes received), for the audit. Called in the DUL thread, after its last write."""
    out = []
    for f in _PENDING.pop(assoc, []):
        if not f.complete:
            f.discard()
            out.append(f.received)
    return out


def stream_to_spool(ae: AE, spool: Spool, max_instance_bytes: int) -> None:
    """Make ``ae`` receive C-STORE data sets into ``spool``'s incoming folder (0: no limit)."""
    stream_c_store_data_sets(_file_for)
    _RECEIVERS[ae] = (spool.incoming, max_instance_bytes)


def live_file(path: str) -> IncomingFile | None:
    """The :class:`IncomingFile` pynetdicom is writing (or wrote) at ``path``, if it is ours."""
    return _LIVE.get(path)
