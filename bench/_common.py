"""Shared helpers for the benchmarks: the one JSON result, the model under test, realistic films.

Every benchmark compares against a reference measured in the same run (dcmtk, PyTorch), because
absolute times on a shared 2-core machine are noisy. Films are real NIH chest films from the
shared data, upscaled to a detector-sized 2500 x 2048 16-bit image with a little detector noise,
then wrapped into DICOM by the project's own ``png_to_dicom`` (dcmtk ``dcmcjpeg`` for JPEG
Lossless). Process control is in ``_procs.py``, the peers (node, storescp, storescu) in
``_peers.py``. Nothing here is imported by the worker.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import _procs  # noqa: F401 - SIGTERM/SIGHUP -> SystemExit: a stopped benchmark still removes its scratch
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PY = Path(sys.executable)
DCMTK = Path("/usr/bin")  # never the pynetdicom scripts of the same name in .venv/bin
DEV_MODEL = ROOT / "runs" / "bench" / "dev_effnet_lite0.onnx"
FILM_ROWS, FILM_COLS = 2500, 2048


# ----------------------------------------------------------------------------- output

_JSON_OUT: Any = None  # the real stdout once reserve_stdout_for_json() has run


def reserve_stdout_for_json() -> None:
    """Keep stdout for :func:`emit` alone: from here on everything else written to file
    descriptor 1 -- ``print()``, libraries that print (efficientnet_lite_pytorch prints "Loaded
    pretrained weights ..."), C-level messages from torch/onnxruntime, child processes -- goes
    to stderr. Called on import when a bench/ script is the main program (so every benchmark,
    and run_all, prints exactly one JSON object on stdout); idempotent."""
    global _JSON_OUT
    if _JSON_OUT is not None:
        return
    sys.stdout.flush()
    _JSON_OUT = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def _main_is_a_bench_script() -> bool:
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return bool(main_file) and Path(main_file).resolve().parent == ROOT / "bench"


def emit(result: dict[str, Any], indent: int | None = None) -> None:
    """Print the script's one JSON object, on one line unless ``indent`` (stdout carries
    nothing else; see :func:`reserve_stdout_for_json`)."""
    out = _JSON_OUT if _JSON_OUT is not None else sys.stdout
    out.write(json.dumps(result, indent=indent, default=_jsonable) + "\n")
    out.flush()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(type(obj).__name__)


def note(msg: str) -> None:
    """Progress on stderr (stdout is the JSON)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    """Where the figures came from."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "load_avg_1m": round(os.getloadavg()[0], 2)}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def pct(values: Iterable[float], q: float) -> float:
    return float(np.percentile(np.asarray(list(values), dtype=float), q))


# ----------------------------------------------------------------------------- the model

def model_under_test() -> tuple[Path, str]:
    """(ONNX path, description): the shipped model when committed, else a dev export.

    The dev export is the same architecture (EfficientNet-Lite0, ImageNet weights, untrained
    head) built with training/network.py: speed and memory do not depend on the weights.
    """
    from cxr_triage.paths import bundled_model_path

    shipped = bundled_model_path()
    if shipped.is_file():
        return shipped, "shipped"
    if not DEV_MODEL.is_file():
        export_dev_model(DEV_MODEL)
    return DEV_MODEL, "dev export (training/network.py effnet_lite0, ImageNet weights; shipped model not committed yet)"


def export_dev_model(out: Path) -> Path:
    """Same architecture and contract as the shipped model, without training (needs torch)."""
    import torch

    from cxr_triage.contract.model_file import ModelMetadata
    from cxr_triage.contract.preprocessing import PreprocessSpec
    from cxr_triage.training.export import export_onnx
    from cxr_triage.training.network import ExportWrapper, build_network

    torch.manual_seed(0)
    net = build_network("effnet_lite0", pretrained=True, image_size=224)
    wrapper = ExportWrapper(net, 1.0).eval()
    meta = ModelMetadata(name="cxr-triage-bench-dev", version="0", preprocessing=PreprocessSpec(),
                         thresholds={"sens_0.95": 0.5, "sens_0.98": 0.4, "sens_0.99": 0.3},
                         architecture="effnet_lite0")
    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(wrapper, meta, out)
    return out


# ----------------------------------------------------------------------------- films

def shared_pngs(n: int) -> list[Path]:
    """``n`` real NIH films from the shared data (spread over the set)."""
    from cxr_triage.paths import shared_data_dir

    pngs = sorted((shared_data_dir() / "nih-cxr14" / "images").glob("*.png"))
    if not pngs:
        raise SystemExit("no shared NIH films found (set CXR_TRIAGE_DATA)")
    step = max(1, len(pngs) // n)
    return pngs[::step][:n]


def detector_film(png: Path, rows: int = FILM_ROWS, cols: int = FILM_COLS, seed: int = 0) -> np.ndarray:
    """A real 512 px film upscaled to detector size, 16-bit, with mild quantum noise."""
    from PIL import Image

    with Image.open(png) as img:
        big = img.convert("F").resize((cols, rows), Image.Resampling.BICUBIC)
    arr = np.asarray(big, dtype=np.float32) / 255.0
    arr += np.random.default_rng(seed).normal(0.0, 0.0006, arr.shape).astype(np.float32)
    return np.rint(np.clip(arr, 0.0, 1.0) * 65535.0).astype(np.uint16)


def base_films(work: Path, syntaxes: list[str], n_distinct: int, rows: int = FILM_ROWS,
               cols: int = FILM_COLS) -> dict[str, list[Path]]:
    """``n_distinct`` DX films per transfer syntax, encoded once each."""
    from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom, write_dicom

    out: dict[str, list[Path]] = {ts: [] for ts in syntaxes}
    for i, png in enumerate(shared_pngs(n_distinct)):
        film = detector_film(png, rows, cols, seed=i)
        for ts in syntaxes:
            ds = png_to_dicom(film, sop_class="DX_PRES", transfer_syntax_uid=ts, bits_stored=16,
                              patient_id=f"BENCH{i:04d}", patient_name="Bench^Film")
            out[ts].append(write_dicom(ds, work / "base" / ts / f"{i:03d}.dcm"))
    return out


def clone_instances(bases: list[Path], out_dir: Path, n: int, films_per_study: int = 1) -> list[Path]:
    """``n`` distinct instances (new UIDs) from a few encoded films: a realistic stream without
    re-encoding each film. ``films_per_study`` consecutive instances share a study."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = [dcmread(p) for p in bases]
    paths = []
    study = series = ""
    for i in range(n):
        ds = loaded[i % len(loaded)]
        if i % films_per_study == 0:
            study, series = generate_uid(), generate_uid()
        sop = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.AccessionNumber = f"B{i:07d}"
        ds.InstanceNumber = i % films_per_study + 1
        path = out_dir / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def transfer_syntax(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def tempdir(prefix: str) -> Path:
    """A scratch folder on the local disk (removed by the caller with :func:`rmtree`)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


if _main_is_a_bench_script():
    reserve_stdout_for_json()
