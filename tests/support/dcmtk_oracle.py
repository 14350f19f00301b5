"""dcmtk's ``dcm2pnm`` as an independent oracle for display pixels.

dcmtk's ``dcmimgle`` implements the PS3.3 C.11 grayscale pipeline on its own (Modality LUT,
VOI LUT or window with the file's VOI LUT Function, MONOCHROME1 inversion), so a film our reader
decodes must look like what ``dcm2pnm`` writes for it, up to the output scaling (we stretch to
[0, 1] over the VOI's output range; dcmtk over the LUT's bit depth) and rounding.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

DCM2PNM = Path("/usr/bin/dcm2pnm")


def dcmtk_display(path: str | Path, *voi: str) -> np.ndarray:
    """``dcm2pnm +on2 <voi options> path`` as float64 [0, 1] (16-bit PNG / 65535).

    ``voi``: dcm2pnm's VOI options, e.g. ``("+Wl", "1")`` for the first VOI LUT Sequence item,
    ``("+Wi", "1")`` for the first window, ``("+Wm",)`` for a min-max window."""
    path = Path(path)
    out = path.with_name(path.stem + ".dcmtk.png")
    proc = subprocess.run([str(DCM2PNM), "+on2", *voi, str(path), str(out)],
                          capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"dcm2pnm failed ({proc.returncode}): {proc.stderr.strip()}")
    with Image.open(out) as img:
        return np.asarray(img, dtype=np.float64) / 65535.0


def affine_fit(ours: np.ndarray, ref: np.ndarray, where: np.ndarray | None = None) -> tuple[float, float, float]:
    """(correlation, gain, max |residual|) of ``ours ~ gain * ref + offset`` (least squares)."""
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if where is not None:
        a, b = a[where], b[where]
    a, b = a.ravel(), b.ravel()
    if a.std() == 0 or b.std() == 0:
        return float("nan"), float("nan"), float(np.abs(a - b).max())
    corr = float(np.corrcoef(a, b)[0, 1])
    gain, offset = np.polyfit(b, a, 1)
    resid = float(np.abs(a - (gain * b + offset)).max())
    return corr, float(gain), resid


def assert_like_dcmtk(ours: np.ndarray, ref: np.ndarray, *, min_corr: float = 0.999,
                      max_resid: float = 2.0 / 255, where: np.ndarray | None = None) -> None:
    """Our display pixels equal dcmtk's up to a positive affine map and rounding."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    corr, gain, resid = affine_fit(ours, ref, where)
    assert corr > min_corr and gain > 0 and resid <= max_resid, (
        f"not like dcm2pnm: correlation {corr:.5f}, gain {gain:.4f}, max residual {resid:.4f}")
