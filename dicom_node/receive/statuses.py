"""The C-STORE response statuses the receiving node answers (PS3.4 Annex B.2.3).

Named as pynetdicom's storage status table names them
(``pynetdicom.status.STORAGE_SERVICE_CLASS_STATUS``): Success, Refused: Out of Resources,
Error: Data Set Does Not Match SOP Class, Error: Cannot Understand. With them, the reason an
unreadable data set is refused with, in our words (:func:`unreadable_reason`).
"""

from __future__ import annotations

import logging
import re

from pydicom.errors import InvalidDicomError
from pynetdicom.status import Status

SUCCESS = int(Status.SUCCESS)
OUT_OF_RESOURCES = 0xA700       # not durably stored (disk full, database locked) or too large
DATASET_MISMATCH = 0xA900       # missing/invalid Study or SOP Instance UID, UID differs from the request
CANNOT_UNDERSTAND = 0xC000      # unreadable data set or header


def hex_status(code: int) -> str:
    """``0xA700``: a status as the audit log and the logs write it."""
    return f"0x{code:04X}"


log = logging.getLogger(__name__)

_LIBRARY_HINT = re.compile(r"\s*[^.]*\bforce=True\b[^.]*\.?", re.IGNORECASE)
NOT_DICOM = "not a DICOM data set: no File Meta Information header / 'DICM' preamble (PS3.10 7.1)"


def unreadable_reason(what: str, exc: BaseException) -> str:
    """The reason recorded (quarantine, audit, log) for a data set that cannot be read, in our
    words: ``NOT_DICOM`` for bytes without a Part 10 header, else ``"<what>: <detail>"`` with
    any advice the library gives its callers (pydicom's "Use force=True ...") cut out. The
    library's whole message goes to the DEBUG log."""
    log.debug("%s: %s: %s", what, type(exc).__name__, exc)
    if isinstance(exc, InvalidDicomError):
        return NOT_DICOM
    detail = _LIBRARY_HINT.sub("", str(exc)).strip()
    return f"{what}: {detail}" if detail else f"{what} ({type(exc).__name__})"
