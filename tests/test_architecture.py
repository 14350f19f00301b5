"""Import rules between the stages, read from the source (AST), lazy imports included.

- the domain contract (``cxr_triage.contract``) imports nothing else of ours;
- inference imports the contract and the core (config, paths, logs) only;
- the node (``dicom_node``) sees inference only through the film triager
  (``inference.pipeline``, imported by ``dicom_node/worker``), the film reader for display
  pixels (``inference.reader``) and the site threshold file format (``inference.site_threshold``);
- evaluation and training are imported by nothing that runs in the worker;
- torch, torchvision and MONAI are imported under ``training/`` only.

See docs/architecture.md.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"torch", "torchvision", "monai"}
CORE = {"cxr_triage", "cxr_triage.config", "cxr_triage.paths", "cxr_triage.logs", "cxr_triage.cli"}


def stage_of(module: str) -> str:
    if module in CORE:
        return "core"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "cxr_triage" else "external"


#: stage -> the stages it may import (itself always allowed)
ALLOWED: dict[str, set[str]] = {
    "contract": set(),
    "core": {"contract", "model"},
    "model": set(),
    "inference": {"contract", "core", "model"},
    "dicom_node": {"contract", "core", "inference"},
    "training": {"contract", "core", "model", "inference", "evaluation", "dicom_node"},
    "evaluation": {"contract", "core", "model", "inference", "dicom_node"},
}
#: what the node may use of inference, and from where
NODE_SEES_INFERENCE = {
    "cxr_triage.inference.pipeline": ("cxr_triage.dicom_node.worker.",),   # the film triager
    "cxr_triage.inference.reader": ("cxr_triage.dicom_node.results.", "cxr_triage.dicom_node.web."),
    "cxr_triage.inference.site_threshold": ("cxr_triage.dicom_node.service.",),
}
RUN_TIME = {"contract", "core", "model", "inference", "dicom_node"}


def _package_map() -> dict[str, str]:
    """setup.py's map of ``cxr_triage.*`` packages to folders (the one definition)."""
    spec = importlib.util.spec_from_file_location("_cxr_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    setup_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup_module)
    return setup_module.package_map()  # type: ignore[no-any-return]


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in _package_map().items():
        for path in sorted((ROOT / folder).glob("*.py")):
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # "from cxr_triage.dicom_node import audit": the sub-module is what is imported
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names
                      if f"{target}.{a.name}" in MODULES]
    return found


MODULES = _modules()


def test_the_package_is_seen_whole() -> None:
    stages = {stage_of(m) for m in MODULES}
    assert {"contract", "core", "inference", "dicom_node", "training", "evaluation"} <= stages
    assert "cxr_triage.dicom_node.worker.triage" in MODULES and "cxr_triage.inference.pipeline" in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_stage_imports_follow_the_rules(module: str) -> None:
    stage = stage_of(module)
    broken = []
    for line, target in _imports(MODULES[module], module):
        top = target.split(".")[0]
        if top in HEAVY and stage != "training":
            broken.append(f"line {line}: {target} (torch/MONAI only under training/)")
        if top != "cxr_triage":
            continue
        other = stage_of(target)
        if other == stage or other == "external":
            continue
        if other not in ALLOWED[stage]:
            broken.append(f"line {line}: {stage} may not import {other} ({target})")
        if stage == "dicom_node" and other == "inference":
            base = next((m for m in NODE_SEES_INFERENCE if target == m or target.startswith(m + ".")), None)
            if base is None or not module.startswith(NODE_SEES_INFERENCE[base]):
                broken.append(f"line {line}: the node sees inference only through the film triager ({target})")
    assert not broken, f"{module}:\n" + "\n".join(broken)


def test_nothing_at_run_time_imports_training_or_evaluation() -> None:
    offenders = [
        f"{m}: {t}" for m, p in MODULES.items() if stage_of(m) in RUN_TIME
        for _, t in _imports(p, m) if stage_of(t) in ("training", "evaluation")
    ]
    assert offenders == []


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    """The checker itself: a contract module importing inference is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from cxr_triage.inference.pipeline import Triager\nimport torch\n")
    found = dict(_imports(bad, "cxr_triage.contract.bad"))
    assert found == {1: "cxr_triage.inference.pipeline", 2: "torch"}
    assert "inference" not in ALLOWED["contract"] and stage_of("cxr_triage.inference.pipeline") == "inference"


def test_one_path_per_module() -> None:
    """The stage folders are mapped by setup.py, not linked: no module is reachable twice."""
    links = [str(p.relative_to(ROOT)) for folder in set(_package_map().values())
             for p in (ROOT / folder).iterdir() if p.is_symlink()]
    assert links == []
    assert len(set(MODULES.values())) == len(MODULES)
