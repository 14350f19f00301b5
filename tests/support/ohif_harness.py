"""Run OHIF's own SR loader on an SR file (tests/support/ohif/load_sr.js under node)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Sequence

OHIF_DIR = Path(__file__).parent / "ohif"
HARNESS = OHIF_DIR / "load_sr.js"


def ensure_installed() -> str | None:
    """Install the pinned packages (package-lock.json) if absent; the reason to skip when
    npm or node is missing, else None."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        return "npm/node not installed (Debian: nodejs npm)"
    marker = OHIF_DIR / "node_modules" / "@ohif" / "extension-cornerstone-dicom-sr" / "package.json"
    if not marker.exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts",
                        "--legacy-peer-deps", "--loglevel=error"],
                       cwd=OHIF_DIR, check=True, timeout=600)
    return None


def ohif_load(path: Path | Sequence[Path]) -> tuple[int, dict[str, Any]]:
    """(exit code, what OHIF extracted) for one SR file, or for the SR files of one series
    handed to OHIF together (it shows the last by Instance Number: an amended result)."""
    paths = [path] if isinstance(path, Path) else list(path)
    proc = subprocess.run([shutil.which("node") or "node", str(HARNESS), *map(str, paths)],
                          cwd=OHIF_DIR, capture_output=True, text=True, timeout=120)
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        data = {"error": f"harness output not JSON: {proc.stdout[-500:]} {proc.stderr[-2000:]}"}
    return proc.returncode, data
