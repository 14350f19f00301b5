"""Shared fixtures. Stage-specific fixtures live in the stage's own test modules."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support.tiny_model import build_tiny_model

from cxr_triage.paths import bundled_model_path, shared_data_dir

# dcmtk's tools, not pynetdicom's same-named console scripts in .venv/bin.
DCMTK_BIN = Path("/usr/bin")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $CXR_TRIAGE_DATA); a clear failure when it is missing."""
    try:
        return shared_data_dir()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def sample_dicoms(shared_data: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted((shared_data / "dicom").glob("*.dcm"))}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="session")
def model_path(tiny_model: Path) -> Path:
    """The bundled model when it has been trained and committed, else the tiny one."""
    bundled = bundled_model_path()
    return bundled if bundled.exists() else tiny_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def tiny_nodule_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a nodule/mass output and thresholds (``NODULE_THRESHOLDS``)."""
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny_nodule.onnx", nodule=True)
