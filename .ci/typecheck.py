"""mypy over the package, each module under its one path and its ``cxr_triage.*`` name.

The stage folders (``dicom_node/``, ``inference/``, ...) are mapped into ``cxr_triage.*`` by
``setup.py`` (setuptools ``package_dir``). mypy cannot follow that map from the command line (an
editable install's import hook is invisible to it), so this hands mypy the same map as
``BuildSource(path, module)`` pairs, with the settings of ``[tool.mypy]`` in ``pyproject.toml``.
Errors name the real files. Exit status: 0 clean, 1 type errors, 2 usage/crash.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from mypy import build
from mypy.config_parser import parse_config_file
from mypy.errors import CompileError
from mypy.fscache import FileSystemCache
from mypy.modulefinder import BuildSource
from mypy.options import Options

ROOT = Path(__file__).resolve().parent.parent


def package_map() -> dict[str, str]:
    """setup.py's map of ``cxr_triage.*`` packages to folders (run without its ``setup()`` call)."""
    return runpy.run_path(str(ROOT / "setup.py"))["package_map"]()  # type: ignore[no-any-return]


def sources() -> list[BuildSource]:
    out = []
    for package, folder in sorted(package_map().items()):
        for path in sorted((ROOT / folder).glob("*.py")):
            module = package if path.name == "__init__.py" else f"{package}.{path.stem}"
            out.append(BuildSource(str(path.relative_to(ROOT)), module))
    return out


def main() -> int:
    options = Options()
    parse_config_file(options, lambda: None, str(ROOT / "pyproject.toml"), sys.stdout, sys.stderr)
    srcs = sources()
    try:
        result = build.build(srcs, options, fscache=FileSystemCache())
    except CompileError as exc:
        print("\n".join(exc.messages))
        return 1
    for line in result.errors:
        print(line)
    if result.errors:
        n = sum(": error:" in e for e in result.errors)
        print(f"Found {n} error(s) in {len({e.split(':')[0] for e in result.errors})} file(s) ({len(srcs)} source files)")
        return 1
    print(f"Success: no issues found in {len(srcs)} source files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
