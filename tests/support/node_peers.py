"""Real peers for the node's tests: the node as a subprocess, dcmtk storescu/storescp, Orthanc.

Everything binds to loopback on free ports and is killed at teardown. dcmtk tools are called
by absolute path (pynetdicom installs same-named scripts into .venv/bin).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from pydicom import dcmread
from pydicom import uid as U

from cxr_triage.config import write_config_file

DCMTK = Path("/usr/bin")
ORTHANC = Path("/usr/sbin/Orthanc")
CLI = Path(sys.executable).parent / "cxr-triage"
NODE_AET = "CXRTRIAGE"

# storescu option that proposes each transfer syntax (plus uncompressed, one context each)
_STORESCU_TS = {
    U.JPEGBaseline8Bit: "-xy", U.JPEGExtended12Bit: "-xx", U.JPEGLossless: "-xs",
    U.JPEGLosslessSV1: "-xs", U.JPEG2000Lossless: "-xv", U.JPEG2000: "-xw",
    U.JPEGLSLossless: "-xt", U.JPEGLSNearLossless: "-xu", U.RLELossless: "-xr",
    U.DeflatedExplicitVRLittleEndian: "-xd",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        val = pred()
        if val:
            return val
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what or pred}")
        time.sleep(interval)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, timeout: float = 30.0) -> None:
    wait_for(lambda: _listening(port), timeout, 0.1, f"port {port}")


def write_node_config(path: Path, port: int, model: Path, **sections: dict[str, Any]) -> Path:
    """A temp config: loopback, quiet period 1 s, web off, fast retries; overrides per section."""
    cfg: dict[str, dict[str, Any]] = {
        "inference": {"model_path": str(model), "threads": 1},
        "node": {"host": "127.0.0.1", "port": port, "quiet_period_s": 1.0,
                 "state_dir": str(path.parent / "state"), "network_timeout_s": 10.0},
        "delivery": {"retry_initial_s": 0.5, "retry_max_s": 2.0, "summary_image": False},
        "web": {"enabled": False},
        "logging": {"format": "json", "level": "INFO"},
    }
    return write_config_file(path, cfg, sections)


class NodeProcess:
    """``cxr-triage --config CFG serve`` as a subprocess; logs to ``<dir>/node.log``.

    Subclasses (the reliability suite's ``NodeProc``) change what "ready" means
    (:meth:`ready`), the environment and the default timeouts.
    """

    START_TIMEOUT_S = 60.0
    STOP_TIMEOUT_S = 30.0

    def __init__(self, config: Path, port: int):
        self.config = config
        self.port = port
        self.log = config.parent / "node.log"
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] = {}      # extra environment for the node process

    def _environ(self) -> dict[str, str]:
        return dict(os.environ, OMP_NUM_THREADS="1", **self.env)

    def spawn(self) -> None:
        """Start without waiting for it to be ready."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([str(CLI), "--config", str(self.config), "serve"],
                                         stdout=out, stderr=subprocess.STDOUT, env=self._environ())

    def ready(self) -> bool:
        """The SCP listens last, once everything else is up."""
        return _listening(self.port)

    def start(self, timeout: float | None = None) -> "NodeProcess":
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + (self.START_TIMEOUT_S if timeout is None else timeout)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.tail()}")
            if self.ready():
                return self
            if time.monotonic() > deadline:
                self._sigkill()
                raise TimeoutError(f"node did not become ready:\n{self.tail()}")
            time.sleep(0.2)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, then wait (the node finishes in-flight work)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.STOP_TIMEOUT_S if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def _sigkill(self) -> bool:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            return True
        return False

    def kill(self) -> None:
        """SIGKILL: a crash."""
        self._sigkill()

    @property
    def alive(self) -> bool:
        return bool(self.proc and self.proc.poll() is None)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def status(self) -> dict[str, Any]:
        out = subprocess.run([str(CLI), "--config", str(self.config), "status", "--json",
                              "--studies", "100"], capture_output=True, text=True, timeout=60)
        return json.loads(out.stdout)

    def __enter__(self) -> "NodeProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def echo(port: int, aet: str, aec: str) -> bool:
    r = subprocess.run([str(DCMTK / "echoscu"), "-to", "5", "-aet", aet, "-aec", aec,
                        "127.0.0.1", str(port)], capture_output=True, timeout=30)
    return r.returncode == 0


def c_store(port: int, ds: Any, aet: str = "MODALITY", aec: str = NODE_AET) -> None:
    """One data set over one pynetdicom association (the node's SCU helper); asserts Success."""
    from pynetdicom import AE

    from cxr_triage.dicom_node.delivery.scu import associate

    ae = AE(ae_title=aet)
    ae.add_requested_context(str(ds.SOPClassUID))
    assoc = associate(ae, "127.0.0.1", port, ae_title=aec)
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()


def storescu(files: list[Path], port: int, aet: str = "STORESCU", aec: str = NODE_AET,
             extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """Send files with dcmtk, one association per transfer syntax group (proposing it)."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        ts = str(dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        groups[_STORESCU_TS.get(ts, "-x=")].append(f)
    last = None
    for opt, group in groups.items():
        cmd = [str(DCMTK / "storescu"), "-R", opt, "-aet", aet, "-aec", aec, *(extra or []),
               "127.0.0.1", str(port), *map(str, group)]
        last = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if last.returncode != 0:
            return last
    assert last is not None
    return last


class StoreSCP:
    """dcmtk ``storescp`` destination sorting what it receives by study."""

    def __init__(self, out_dir: Path, port: int, aet: str = "RESULTS"):
        self.dir = out_dir
        self.port = port
        self.aet = aet
        self.proc: subprocess.Popen | None = None
        self.log = out_dir.parent / f"storescp_{port}.log"

    def start(self) -> "StoreSCP":
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(DCMTK / "storescp"), "--aetitle", self.aet, "--output-directory", str(self.dir),
             "--sort-on-study-uid", "st", str(self.port)],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def destination(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.port}"

    def received(self) -> list[Any]:
        """Every dataset received so far (headers)."""
        return [dcmread(p, stop_before_pixels=True) for p in sorted(self.dir.rglob("*"))
                if p.is_file() and not p.name.startswith(".")]

    def __enter__(self) -> "StoreSCP":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class Orthanc:
    """Orthanc with a temp JSON config (per ../shared/docs/dicom-conventions.md)."""

    def __init__(self, work: Path, node_port: int, node_aet: str = NODE_AET,
                 extra: dict[str, Any] | None = None):
        self.work = work
        self.extra = extra or {}            # further configuration keys (e.g. the DICOMweb plugin)
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.node_port = node_port
        self.node_aet = node_aet
        self.proc: subprocess.Popen | None = None

    @property
    def destination(self) -> str:
        return f"ORTHANC@127.0.0.1:{self.dicom_port}"

    def start(self, timeout: float = 60.0) -> "Orthanc":
        self.work.mkdir(parents=True, exist_ok=True)
        cfg = {
            "Name": "cxr-triage-test", "StorageDirectory": str(self.work / "storage"),
            "IndexDirectory": str(self.work / "index"), "DicomAet": "ORTHANC",
            "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True, "StableAge": 5, "Plugins": [],
            "DicomModalities": {"triage": {"AET": self.node_aet, "Host": "127.0.0.1",
                                           "Port": self.node_port}},
        }
        cfg.update(self.extra)
        (self.work / "orthanc.json").write_text(json.dumps(cfg))
        self.proc = subprocess.Popen([str(ORTHANC), str(self.work / "orthanc.json")],
                                     stdout=(self.work / "orthanc.log").open("ab"),
                                     stderr=subprocess.STDOUT)
        wait_for(lambda: self._alive(), timeout, 0.2, "Orthanc REST")
        return self

    def _alive(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {(self.work / 'orthanc.log').read_text()[-2000:]}")
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: bytes | dict, timeout: float = 120) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data,
                                     method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
