"""Shared helpers for the benchmarks: the model under test, realistic films, real peers.

Every benchmark compares against a reference measured in the same run (dcmtk, PyTorch), because
absolute times on a shared 2-core machine are noisy. Films are real NIH chest films from the
shared data, upscaled to a detector-sized 2500 x 2048 16-bit image with a little detector noise,
then wrapped into DICOM by the project's own ``png_to_dicom`` (dcmtk ``dcmcjpeg`` for JPEG
Lossless). Nothing here is imported by the worker.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from cxr_triage.config import write_config_file

# A benchmark stopped with SIGTERM (run_all's time limit) still runs its ``finally`` blocks:
# the peers it started are stopped and its scratch folder removed.
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

ROOT = Path(__file__).resolve().parent.parent
PY = Path(sys.executable)
CLI = PY.parent / "cxr-triage"
DCMTK = Path("/usr/bin")  # never the pynetdicom scripts of the same name in .venv/bin
DEV_MODEL = ROOT / "runs" / "bench" / "dev_effnet_lite0.onnx"
NODE_AET = "CXRTRIAGE"
FILM_ROWS, FILM_COLS = 2500, 2048

# storescu option proposing a transfer syntax (plus the uncompressed ones)
STORESCU_TS = {
    "1.2.840.10008.1.2.1": "-x=",
    "1.2.840.10008.1.2": "-x=",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.57": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.5": "-xr",
}


# ----------------------------------------------------------------------------- output

def emit(result: dict[str, Any]) -> None:
    """Print the script's one JSON object (stdout carries nothing else)."""
    sys.stdout.write(json.dumps(result, indent=2, default=_jsonable) + "\n")
    sys.stdout.flush()


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
    head) built with model/network.py: speed and memory do not depend on the weights.
    """
    from cxr_triage.paths import bundled_model_path

    shipped = bundled_model_path()
    if shipped.is_file():
        return shipped, "shipped"
    if not DEV_MODEL.is_file():
        export_dev_model(DEV_MODEL)
    return DEV_MODEL, "dev export (model/network.py effnet_lite0, ImageNet weights; shipped model not committed yet)"


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


# ----------------------------------------------------------------------------- peers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(pred: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        val = pred()
        if val:
            return val
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def stop_proc(proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """SIGTERM, wait, SIGKILL if it will not stop (only the process we started)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_storescp(out_dir: Path, port: int, aet: str = "SINK", extra: list[str] | None = None,
                   log: Path | None = None) -> subprocess.Popen:
    """dcmtk storescp writing every received instance to ``out_dir`` (all syntaxes accepted)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(DCMTK / "storescp"), "--aetitle", aet, "+xa", "--output-directory", str(out_dir),
           *(extra or []), str(port)]
    sink = log.open("ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    wait_for(lambda: listening(port) or proc.poll() is not None, 30, what=f"storescp :{port}")
    if proc.poll() is not None:
        raise RuntimeError(f"storescp exited with {proc.returncode}")
    return proc


def storescu_cmd(files: list[Path], port: int, ts_option: str, aec: str = NODE_AET,
                 aet: str = "BENCHSCU") -> list[str]:
    return [str(DCMTK / "storescu"), "-R", ts_option, "-aet", aet, "-aec", aec,
            "-to", "60", "-ta", "60", "-td", "120", "127.0.0.1", str(port), *map(str, files)]


def write_node_config(path: Path, port: int, model: Path, state_dir: Path,
                      **sections: dict[str, Any]) -> Path:
    """A node config for a bench run (loopback, web off, JSON logs); overrides per section."""
    cfg: dict[str, dict[str, Any]] = {
        "inference": {"model_path": str(model), "threads": 2},
        "node": {"host": "127.0.0.1", "port": port, "state_dir": str(state_dir),
                 "network_timeout_s": 60.0},
        "delivery": {"summary_image": False},
        "web": {"enabled": False},
        "logging": {"format": "json", "level": "INFO"},
    }
    return write_config_file(path, cfg, sections)


class Node:
    """``cxr-triage --config CFG serve`` as a subprocess (the real serving process)."""

    def __init__(self, config: Path, port: int, log: Path):
        self.config, self.port, self.log = config, port, log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> "Node":
        self.proc = subprocess.Popen([str(CLI), "--config", str(self.config), "serve"],
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     env=dict(os.environ))
        deadline = time.monotonic() + timeout
        while not listening(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"node did not start:\n{self.tail()}")
            time.sleep(0.1)
        return self

    def stop(self, graceful: bool = True) -> None:
        """SIGTERM and wait (the node finishes in-flight work), or SIGKILL once the figures
        are taken (the node's last association thread lingers for network_timeout_s)."""
        if graceful:
            stop_proc(self.proc, 60.0)
        elif self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_records(self, msg: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if msg is None or rec.get("msg") == msg:
                out.append(rec)
        return out

    def rss_kb(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) of the serving process, in kB."""
        assert self.proc is not None
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            m = re.match(r"(VmRSS|VmHWM):\s+(\d+) kB", line)
            if m:
                fields[m.group(1)] = int(m.group(2))
        return fields

    def __enter__(self) -> "Node":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def tempdir(prefix: str) -> Path:
    """A scratch folder on the local disk (removed by the caller with :func:`rmtree`)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
