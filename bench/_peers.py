"""Real peers for the benchmarks: the node as ``cxr-triage serve``, dcmtk storescp and storescu.

Each runs as its own process group (:func:`_procs.spawn`) and is stopped by the benchmark's
``finally`` and, whatever happens, by the atexit hook of :mod:`_procs`. Nothing here is imported
by the worker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from _common import DCMTK, PY
from _procs import listening, spawn, stop_group, stop_proc, wait_for

from cxr_triage.config import write_config_file

CLI = PY.parent / "cxr-triage"
NODE_AET = "CXRTRIAGE"


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

    def __init__(self, config: Path, port: int, log: Path, cli: Path = CLI):
        """``cli``: the ``cxr-triage`` executable (another tree's, to measure it side by side)."""
        self.config, self.port, self.log, self.cli = config, port, log, cli
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> "Node":
        with self.log.open("ab") as log:
            self.proc = spawn([str(self.cli), "--config", str(self.config), "serve"],
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
