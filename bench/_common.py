"""Shared helpers for the benchmarks: the model under test, realistic films, real peers.

Every benchmark compares against a reference measured in the same run (dcmtk, PyTorch), because
absolute times on a shared 2-core machine are noisy. Films are real NIH chest films from the
shared data, upscaled to a detector-sized 2500 x 2048 16-bit image with a little detector noise,
then wrapped into DICOM by the project's own ``png_to_dicom`` (dcmtk ``dcmcjpeg`` for JPEG
Lossless). Nothing here is imported by the worker.
"""

from __future__ import annotations

import atexit
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


def _exit_on_signal(signum: int, frame: Any) -> None:
    """SIGTERM/SIGHUP -> SystemExit: ``finally`` blocks and atexit run (peers stopped, scratch
    removed). One-shot: a second signal does not interrupt that cleanup."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(128 + signum)


# A benchmark stopped with SIGTERM (run_all's time limit) still runs its ``finally`` blocks and
# the atexit hook below: the peers it started are stopped and its scratch folder removed.
signal.signal(signal.SIGTERM, _exit_on_signal)
signal.signal(signal.SIGHUP, _exit_on_signal)

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


# Peers (node, storescp) run in a session of their own, so that a signal meant for the
# benchmark does not reach them half-way and stopping one stops everything it started; each is
# stopped by the benchmark's ``finally`` and, whatever happens, by the atexit hook (also after
# SIGTERM, see _exit_on_signal). run_all additionally sweeps up anything a step left behind.
_CHILDREN: list[subprocess.Popen] = []


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen:
    """Popen in a new session (process group = its pid), remembered for the atexit stop."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    _CHILDREN.append(proc)
    return proc


def live_processes() -> Iterable[tuple[int, Path, list[str]]]:
    """(pid, its /proc folder, the fields of /proc/<pid>/stat after the command name: state,
    ppid, pgrp, ...) of every process that has not exited (zombies, waiting to be reaped,
    are left out); Linux /proc."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        if len(fields) > 2 and fields[0] != "Z":
            yield int(entry.name), Path(entry.path), fields


def group_members(pgid: int) -> list[int]:
    """Pids of the live processes in process group ``pgid``."""
    return [pid for pid, _, fields in live_processes() if int(fields[2]) == pgid]


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _exited(pid: int) -> bool:
    """Has ``pid`` (our child) exited? Does not reap it: while it is a zombie its pid, and so
    its process group id, cannot be reused."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def wait_exited(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _exited(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_group(proc: subprocess.Popen, timeout: float = 30.0, sig: int = signal.SIGTERM) -> None:
    """``sig`` to the whole process group led by ``proc`` (started with a new session), wait up
    to ``timeout``, then SIGKILL the group; once the leader has exited, SIGKILL whatever is
    left in its group, then reap the leader."""
    if proc.returncode is None:  # not reaped yet: its pid still names its group
        _signal_group(proc.pid, sig)
        if not wait_exited(proc.pid, timeout):
            _signal_group(proc.pid, signal.SIGKILL)
            wait_exited(proc.pid, 10.0)
        _signal_group(proc.pid, signal.SIGKILL)  # leftovers of the group (leader is a zombie)
        # SIGKILL is asynchronous: on a loaded machine a killed member can still be running for
        # a moment; wait until the group is empty, so that what is found later really escaped it
        deadline = time.monotonic() + 10.0
        while group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    try:
        proc.wait(10.0)
    except subprocess.TimeoutExpired:
        pass
    if proc in _CHILDREN:
        _CHILDREN.remove(proc)


def stop_proc(proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """SIGTERM, wait, SIGKILL if it will not stop (only the processes we started: the child
    and, when it was started by :func:`spawn`, its process group)."""
    if proc is None:
        return
    if proc in _CHILDREN:
        stop_group(proc, timeout)
        return
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@atexit.register
def _stop_children() -> None:
    for proc in reversed(list(_CHILDREN)):
        stop_group(proc, 10.0)


def start_storescp(out_dir: Path, port: int, aet: str = "SINK", extra: list[str] | None = None,
                   log: Path | None = None) -> subprocess.Popen:
    """dcmtk storescp writing every received instance to ``out_dir`` (all syntaxes accepted)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(DCMTK / "storescp"), "--aetitle", aet, "+xa", "--output-directory", str(out_dir),
           *(extra or []), str(port)]
    sink = log.open("ab") if log else subprocess.DEVNULL
    proc = spawn(cmd, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: listening(port) or proc.poll() is not None, 30, what=f"storescp :{port}")
    except BaseException:
        stop_proc(proc)
        raise
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
        with self.log.open("ab") as log:
            self.proc = spawn([str(CLI), "--config", str(self.config), "serve"],
                              stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            deadline = time.monotonic() + timeout
            while not listening(self.port):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node did not start:\n{self.tail()}")
                time.sleep(0.1)
        except BaseException:
            self.stop(graceful=False)
            raise
        return self

    def stop(self, graceful: bool = True) -> None:
        """SIGTERM and wait (the node finishes in-flight work), or SIGKILL once the figures
        are taken (the node's last association thread lingers for network_timeout_s)."""
        if self.proc is None:
            return
        if graceful:
            stop_proc(self.proc, 60.0)
        else:
            stop_group(self.proc, 10.0, signal.SIGKILL)

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


if _main_is_a_bench_script():
    reserve_stdout_for_json()
