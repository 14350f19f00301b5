"""The worker (cxr_triage.contract, inference/ and dicom_node/, every sub-package) never loads torch or MONAI.

Checked in a fresh interpreter: a test process has usually imported torch already (training
tests), so ``sys.modules`` there proves nothing.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import cxr_triage.contract
import cxr_triage.dicom_node
import cxr_triage.inference

HEAVY = ("torch", "torchvision", "monai")


def _worker_modules() -> list[str]:
    names = ["cxr_triage.cli", "cxr_triage.inference.pipeline", "cxr_triage.inference.cli"]
    for pkg in (cxr_triage.contract, cxr_triage.inference, cxr_triage.dicom_node):
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}.")]
    return sorted(set(names))


def test_worker_imports_neither_torch_nor_monai():
    modules = _worker_modules()
    assert "cxr_triage.inference.pipeline" in modules and "cxr_triage.dicom_node.tools.film_to_dicom" in modules
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(json.dumps(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == [], f"worker modules pulled in: {loaded[:10]}"
