"""The C-STORE response statuses the receiving node answers (PS3.4 Annex B.2.3).

Named as pynetdicom's storage status table names them
(``pynetdicom.status.STORAGE_SERVICE_CLASS_STATUS``): Success, Refused: Out of Resources,
Error: Data Set Does Not Match SOP Class, Error: Cannot Understand.
"""

from __future__ import annotations

from pynetdicom.status import Status

SUCCESS = int(Status.SUCCESS)
OUT_OF_RESOURCES = 0xA700       # not durably stored (disk full, database locked) or too large
DATASET_MISMATCH = 0xA900       # missing/invalid Study or SOP Instance UID, UID differs from the request
CANNOT_UNDERSTAND = 0xC000      # unreadable data set or header


def hex_status(code: int) -> str:
    """``0xA700``: a status as the audit log and the logs write it."""
    return f"0x{code:04X}"
