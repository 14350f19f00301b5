"""Where tests leave files for a person to look at (rendered SRs, screenshots, OHIF's view).

``$CXR_TRIAGE_ARTEFACTS/<name>`` when that variable is set (CI keeps the folder), else the
test's own pytest tmp_path."""

from __future__ import annotations

import os
import re
from pathlib import Path


def artefact_dir(tmp_path: Path, name: str) -> Path:
    base = os.environ.get("CXR_TRIAGE_ARTEFACTS")
    if not base:
        return tmp_path
    out = Path(base) / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    out.mkdir(parents=True, exist_ok=True)
    return out
