"""Where tests leave files for a person to look at (rendered SRs, screenshots, OHIF's view).

``$CXR_TRIAGE_ARTEFACTS/<name>`` when that variable is set (CI keeps the folder), else the
checkout's ``test-artifacts/<name>`` (git-ignored): after a test run the rendered SR
(``sr_render/*.html`` and its Chromium screenshot ``*.png``) and the worklist and study page
screenshots (``web/``) are there to look at. ``tmp_path`` is used only when neither can be
written."""

from __future__ import annotations

import os
import re
from pathlib import Path


def artefact_dir(tmp_path: Path, name: str) -> Path:
    base = os.environ.get("CXR_TRIAGE_ARTEFACTS") or str(Path(__file__).resolve().parents[2] / "test-artifacts")
    out = Path(base) / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError:
        return tmp_path
    return out
