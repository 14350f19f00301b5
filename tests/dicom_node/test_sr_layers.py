"""The result objects are layered like highdicom: each module of dicom_node/results imports only
modules of its own layer or below (codes and header text values -> header -> content -> document -> summary image),
never the web, the worker or delivery."""

from __future__ import annotations

import ast
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "dicom_node" / "results"
PACKAGE = "cxr_triage.dicom_node.results"

#: module -> its layer; a module may import results modules of a lower or equal layer only
LAYERS = {
    "sr_codes": 0, "header_text": 0,
    "sr_header": 1, "sr_classes": 1, "summary_compression": 1, "summary_render": 1,
    "sr_content": 2,
    "sr": 3,
    "sr_reader": 4, "summary_image": 4,
    "sr_plain": 5,
}


def _our_imports(path: Path) -> set[str]:
    """Every ``cxr_triage.*`` module a file imports (anywhere in it, functions included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cxr_triage"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("cxr_triage"))
    return out


def test_every_results_module_has_a_layer() -> None:
    modules = {p.stem for p in RESULTS.glob("*.py") if p.stem != "__init__"}
    assert modules == set(LAYERS)


def test_results_modules_import_only_lower_layers() -> None:
    wrong = []
    for name, layer in LAYERS.items():
        for imported in _our_imports(RESULTS / f"{name}.py"):
            if not imported.startswith("cxr_triage.dicom_node"):
                continue  # the contract and the core
            target = imported.removeprefix(f"{PACKAGE}.").split(".")[0]
            if not imported.startswith(PACKAGE + ".") or target not in LAYERS:
                if imported != PACKAGE:
                    wrong.append(f"{name} imports {imported} (outside results/)")
            elif LAYERS[target] > layer:
                wrong.append(f"{name} (layer {layer}) imports {target} (layer {LAYERS[target]})")
    assert not wrong, wrong
