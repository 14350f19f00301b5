"""Where the shared data and the bundled model live, with one clear error when missing."""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "CXR_TRIAGE_DATA"


def repo_root() -> Path:
    """The source checkout (meaningful for editable installs, tests and scripts)."""
    return _REPO_ROOT


def shared_data_dir(required: bool = True) -> Path:
    """The shared data folder: ``$CXR_TRIAGE_DATA`` or ``../shared/data`` beside the checkout."""
    env = os.environ.get(DATA_ENV)
    path = Path(env) if env else _REPO_ROOT.parent / "shared" / "data"
    if required and not path.is_dir():
        raise FileNotFoundError(
            f"shared data not found at {path}: set {DATA_ENV} to the folder holding "
            "nih-cxr14/, nih-extra/, rsna-normals/ and dicom/ (see ../shared/data/README.md)"
        )
    return path


def bundled_model_path() -> Path:
    """The default model shipped with the package (trained by `make train`)."""
    from cxr_triage import model

    return Path(model.__file__).resolve().parent / "cxr_triage_effnet_lite0.onnx"
