"""Import rules between the stages, and between the parts of the node, read from the source (AST,
imports inside functions included).

Between the stages (``cxr_triage.<stage>``):
- the domain contract (``cxr_triage.contract``) imports nothing else of ours;
- inference imports the contract and the core (config, paths, logs) only;
- the node (``dicom_node``) sees inference only through the film triager (``inference.pipeline``,
  from the worker), the film reader for display pixels (``inference.reader``, from the result
  objects and the worklist), the site threshold file (``inference.site_threshold``, from the
  service and monitoring) and the bounded inflate of deflated data sets (``inference.deflated``,
  from the receiver and the worker);
- evaluation and training are imported by nothing that runs in the worker;
- torch, torchvision and MONAI are imported under ``training/`` only.

Inside the node (``cxr_triage.dicom_node.<part>``), :data:`NODE_PARTS`: the node proper
(receive, store, worker, delivery), the result objects (which know nothing of the node), the
worklist/web (the store's read side and the one feedback writer only), monitoring (drift), the
tools, and the service that wires them; no cycles between parts.

The checker is :func:`violations`; ``test_the_checker_reports_a_real_violation`` runs it on a
module written to break each kind of rule. See docs/architecture.md.
"""

from __future__ import annotations

import ast
import runpy
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"torch", "torchvision", "monai"}
CORE = {"cxr_triage", "cxr_triage.config", "cxr_triage.settings", "cxr_triage.paths", "cxr_triage.logs", "cxr_triage.cli"}


def stage_of(module: str) -> str:
    if module in CORE:
        return "core"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "cxr_triage" else "external"


def part_of(module: str) -> str | None:
    """``cxr_triage.dicom_node.<part>...`` -> part (a sub-package or a top-level module)."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["cxr_triage", "dicom_node"] else None


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
#: what the node may use of inference, and from which of its parts
NODE_SEES_INFERENCE: dict[str, set[str]] = {
    "cxr_triage.inference.pipeline": {"worker"},                       # the film triager
    "cxr_triage.inference.reader": {"results", "web"},                 # display pixels
    "cxr_triage.inference.site_threshold": {"service", "monitoring"},  # the commissioned threshold file
    "cxr_triage.inference.deflated": {"receive", "worker"},            # bounded inflate (deflate bombs)
}
#: the node's parts -> the parts each may import (itself always allowed). ``compat`` is the one
#: module that patches pynetdicom; ``results`` (codes -> content -> document -> header -> read-back,
#: fallback classes, summary image) knows nothing of the node; ``service`` wires everything.
NODE_PARTS: dict[str, set[str]] = {
    "compat": set(),
    "store": set(),
    "results": set(),
    "receive": {"compat", "store"},
    "worker": {"store", "results", "priors"},
    "priors": {"store", "delivery"},
    "delivery": {"compat", "store", "results"},
    "web": {"store", "results"},
    "monitoring": {"store"},
    "tools": {"compat", "store", "delivery", "results"},
    "service": {"compat", "store", "results", "receive", "worker", "delivery", "web", "monitoring",
                "priors"},
}
#: what the worklist and monitoring may use of the store: its read side and one narrow writer
STORE_READ_SIDE = {"queries", "read_model", "feedback", "heatmaps", "audit", "schema"}
READS_STORE_ONLY = {"web", "monitoring"}
RUN_TIME = {"contract", "core", "model", "inference", "dicom_node"}


def _package_map() -> dict[str, str]:
    """setup.py's map of ``cxr_triage.*`` packages to folders (the one definition; run without
    its ``setup()`` call)."""
    return runpy.run_path(str(ROOT / "setup.py"))["package_map"]()  # type: ignore[no-any-return]


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in _package_map().items():
        for path in sorted((ROOT / folder).glob("*.py")):
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


MODULES = _modules()


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
            # "from cxr_triage.dicom_node.store import audit": the sub-module is what is imported
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names
                      if f"{target}.{a.name}" in MODULES]
    return found


def _node_violations(module: str, target: str) -> list[str]:
    """Rules inside ``dicom_node`` for one import of ``module``."""
    mine, theirs = part_of(module), part_of(target)
    if mine is None or theirs is None or mine == theirs:
        return []
    if theirs not in NODE_PARTS.get(mine, set()):
        return [f"the node's {mine} may not import its {theirs} ({target})"]
    if mine in READS_STORE_ONLY and theirs == "store" and target.count(".") >= 3:
        # ("from ...store import queries" also records the package itself: its modules are judged)
        if target.split(".")[3] not in STORE_READ_SIDE:
            return [f"{mine} reads the store only through its read side {sorted(STORE_READ_SIDE)} ({target})"]
    return []


def violations(module: str, path: Path) -> list[str]:
    """Every broken rule in one module, as ``line N: why`` (empty when it follows them all)."""
    stage = stage_of(module)
    broken = []
    for line, target in _imports(path, module):
        top = target.split(".")[0]
        if top in HEAVY and stage != "training":
            broken.append(f"line {line}: {target} (torch/MONAI only under training/)")
        if top != "cxr_triage":
            continue
        other = stage_of(target)
        if other == stage:
            broken += [f"line {line}: {why}" for why in _node_violations(module, target)]
            continue
        if other not in ALLOWED[stage]:
            broken.append(f"line {line}: {stage} may not import {other} ({target})")
        if stage == "dicom_node" and other == "inference":
            base = next((m for m in NODE_SEES_INFERENCE if target == m or target.startswith(m + ".")), None)
            if base is None or part_of(module) not in NODE_SEES_INFERENCE[base]:
                broken.append(f"line {line}: the node sees inference only through the film triager, "
                              f"the reader and the site threshold file ({target})")
    return broken


def test_the_package_is_seen_whole() -> None:
    stages = {stage_of(m) for m in MODULES}
    assert {"contract", "core", "inference", "dicom_node", "training", "evaluation"} <= stages
    assert "cxr_triage.dicom_node.worker" in MODULES and "cxr_triage.inference.pipeline" in MODULES
    parts = {part_of(m) for m in MODULES} - {None}
    unknown = parts - set(NODE_PARTS)
    assert not unknown, f"dicom_node parts without rules: {sorted(p for p in unknown if p)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_stage_imports_follow_the_rules(module: str) -> None:
    broken = violations(module, MODULES[module])
    assert not broken, f"{module}:\n" + "\n".join(broken)


def test_the_node_parts_have_no_cycle() -> None:
    """The allowed imports between the node's parts, and those actually made, form no cycle."""
    used: dict[str, set[str]] = {p: set() for p in NODE_PARTS}
    for module, path in MODULES.items():
        mine = part_of(module)
        for _, target in _imports(path, module):
            theirs = part_of(target)
            if mine and theirs and theirs != mine:
                used.setdefault(mine, set()).add(theirs)
    for graph in (NODE_PARTS, used):
        try:
            tuple(TopologicalSorter(graph).static_order())
        except CycleError as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"cycle between the node's parts: {exc.args[1]}")


def test_nothing_at_run_time_imports_training_or_evaluation() -> None:
    offenders = [
        f"{m}: {t}" for m, p in MODULES.items() if stage_of(m) in RUN_TIME
        for _, t in _imports(p, m) if stage_of(t) in ("training", "evaluation")
    ]
    assert offenders == []


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("cxr_triage.contract.bad", "from cxr_triage.inference.pipeline import Triager\n",
     "line 1: contract may not import inference"),
    ("cxr_triage.inference.bad", "def f():\n    import torch\n", "line 2: torch (torch/MONAI only"),
    ("cxr_triage.dicom_node.results.bad", "def f():\n    from cxr_triage.dicom_node.web import worklist\n",
     "line 2: the node's results may not import its web"),
    ("cxr_triage.dicom_node.web.bad", "from cxr_triage.dicom_node.store.jobs import JobStore\n",
     "line 1: web reads the store only through its read side"),
    ("cxr_triage.dicom_node.store.bad", "from cxr_triage.dicom_node.worker import triage\n",
     "line 1: the node's store may not import its worker"),
    ("cxr_triage.dicom_node.delivery.bad", "from cxr_triage.inference.pipeline import Triager\n",
     "line 1: the node sees inference only through"),
    ("cxr_triage.dicom_node.bad", "from cxr_triage.training.train import train\n",
     "line 1: dicom_node may not import training"),
])
def test_the_checker_reports_a_real_violation(tmp_path: Path, module: str, source: str, expected: str) -> None:
    """The checker itself, run on a module written to break one rule: it says which and where."""
    bad = tmp_path / "bad.py"
    bad.write_text(source)
    found = violations(module, bad)
    assert any(v.startswith(expected) for v in found), found


def test_one_path_per_module() -> None:
    """The stage folders are mapped by setup.py, not linked: no module is reachable twice."""
    links = [str(p.relative_to(ROOT)) for folder in set(_package_map().values())
             for p in (ROOT / folder).iterdir() if p.is_symlink()]
    assert links == []
    assert len(set(MODULES.values())) == len(MODULES)
