"""Docs true to the code: every module path the README and docs/ name in backticks exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "model" / "MODEL_CARD.md"]
#: `folder/module.py` in backticks (a bare file name is left to its table's context)
MODULE_PATH = re.compile(r"`([A-Za-z_][\w.-]*/[\w./-]*\.py)`")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_module_paths_exist(doc: Path) -> None:
    missing = [
        f"line {n}: {path}"
        for n, line in enumerate(doc.read_text().splitlines(), 1)
        for path in MODULE_PATH.findall(line)
        if not any((base / path).exists() for base in (ROOT, ROOT / "dicom_node", ROOT / "cxr_triage"))
    ]
    assert not missing, f"{doc.name} names modules that do not exist:\n" + "\n".join(missing)
