"""The package map: the top-level stage folders install as ``cxr_triage.<stage>``, without links.

Everything else about the project is declared in ``pyproject.toml``; only the mapping of
folders to packages lives here, because it is computed: each stage folder's sub-packages are
found where they are, so a new sub-package needs no edit. ``cxr_triage/`` itself holds the
core (config, paths, logs, cli) and the domain contract (``cxr_triage/contract``).

``pip install -e .`` maps the same folders for an editable install (setuptools' import hook);
``.ci/typecheck.py`` gives mypy the same map.
"""

from __future__ import annotations

from setuptools import find_namespace_packages, setup

#: the top-level folders that are stages of the one package (the specification's layout)
STAGES = ("model", "inference", "dicom_node", "training", "evaluation")


def package_map() -> dict[str, str]:
    """``cxr_triage.*`` package name -> the folder that holds it (relative to this file)."""
    found = {"cxr_triage": "cxr_triage"}
    for stage in ("", *STAGES):
        folder = stage or "cxr_triage"
        if stage:
            found[f"cxr_triage.{stage}"] = folder
        # namespace discovery: data-only folders (templates, static) are packages too
        for sub in find_namespace_packages(folder, exclude=["*__pycache__*"]):
            found[f"cxr_triage.{stage + '.' if stage else ''}{sub}"] = f"{folder}/{sub.replace('.', '/')}"
    return found


if __name__ == "__main__":
    PACKAGES = package_map()
    setup(
        packages=sorted(PACKAGES),
        # only the roots: a sub-package's folder follows from its parent's
        package_dir={name: folder for name, folder in PACKAGES.items() if name == "cxr_triage" or name.count(".") == 1
                     and not folder.startswith("cxr_triage/")},
    )
