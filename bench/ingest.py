"""Ingest: the same instances sent by dcmtk storescu to dcmtk storescp and to the node, and
by STOW-RS (PS3.18 10.5) to the node's web server, in the same run.

The reference is dcmtk ``storescp`` writing each instance to disk at its fastest: bit-preserving
(``+B``, the received bytes written as they come) and the largest receive PDU (``--max-pdu
131072``; the default 16 KB costs it 10-20 %). It does not fsync (it has no such option). The node stores durably before it answers (fsync + atomic rename, SQLite WAL with
synchronous=FULL). The node's triage worker is kept idle during the measurement with a quiet
period longer than the run (no study becomes due), so the figure is receiving alone.
Each sender run is one storescu association carrying every instance of one transfer syntax;
the order alternates between syntaxes so neither receiver always goes first. The STOW-RS
sender posts the same files as they are (``requests``, one keep-alive HTTP connection,
``STOW_BATCH`` instances per ``multipart/related`` request, streamed); the node stores each
part by the same commit path as C-STORE (``receive/stow.py``).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Iterator

import _common as C
import _peers as peers
import _procs as procs
import requests
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1

STORESCP_OPTIONS = ["+B", "--max-pdu", "131072"]
STOW_BATCH = 10            # instances per STOW-RS request (a small study)
STOW_BOUNDARY = "cxr-triage-bench-boundary"
SYNTAXES = {"explicit_vr_little_endian": str(ExplicitVRLittleEndian),
            "jpeg_lossless_sv1": str(JPEGLosslessSV1)}


def send(files: list[Path], port: int, ts: str, aec: str) -> float:
    """Seconds for one storescu run carrying ``files``; raises when it fails."""
    cmd = peers.storescu_cmd(files, port, peers.STORESCU_TS[ts], aec=aec)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds


def _multipart(files: list[Path]) -> Iterator[bytes]:
    for f in files:
        yield f"--{STOW_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield f.read_bytes()
        yield b"\r\n"
    yield f"--{STOW_BOUNDARY}--\r\n".encode()


def send_stow(files: list[Path], url: str) -> float:
    """Seconds to STOW-RS ``files`` to ``url`` in requests of STOW_BATCH; raises unless each
    request is answered 200 (every instance stored)."""
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={STOW_BOUNDARY}'}
    with requests.Session() as session:
        start = time.perf_counter()
        for at in range(0, len(files), STOW_BATCH):
            reply = session.post(url, data=_multipart(files[at:at + STOW_BATCH]), headers=headers, timeout=900)
            if reply.status_code != 200:
                raise RuntimeError(f"STOW-RS answered {reply.status_code}: {reply.text[-2000:]}")
        return time.perf_counter() - start


def to_storescp(files: list[Path], ts: str, work: Path) -> dict:
    out, port = work / "storescp_out", procs.free_port()
    proc = peers.start_storescp(out, port, aet="SINK", extra=STORESCP_OPTIONS, log=work / "storescp.log")
    try:
        seconds = send(files, port, ts, "SINK")
    finally:
        procs.stop_proc(proc)
    got = sum(1 for p in out.rglob("*") if p.is_file())
    C.rmtree(out)
    if got != len(files):
        raise RuntimeError(f"storescp stored {got} of {len(files)} instances")
    return {"seconds": round(seconds, 3), "instances_per_s": round(len(files) / seconds, 2)}


def to_node(files: list[Path], ts: str, work: Path, model: Path, stow: bool = False) -> dict:
    """The node receiving ``files`` over DIMSE (storescu) or STOW-RS (``stow``)."""
    port, web_port, state = procs.free_port(), procs.free_port(), work / "node_state"
    web = {"enabled": True, "host": "127.0.0.1", "port": web_port} if stow else {"enabled": False}
    cfg = peers.write_node_config(work / "node.toml", port, model, state, web=web,
                                  node={"quiet_period_s": 1.0e7})  # worker idle: nothing becomes due
    node = peers.Node(cfg, port, work / "node.log").start()
    try:
        if stow:
            procs.wait_for(lambda: procs.listening(web_port), 30, what="the node's web server")
            seconds = send_stow(files, f"http://127.0.0.1:{web_port}/dicomweb/studies")
        else:
            seconds = send(files, port, ts, peers.NODE_AET)
    finally:
        node.stop(graceful=False)  # acknowledged = durable; a graceful stop waits network_timeout_s
    with sqlite3.connect(state / "queue.sqlite3") as con:
        got = con.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
        triaged = con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    spooled = sum(1 for p in (state / "spool").rglob("*.dcm"))
    C.rmtree(state)
    if got != len(files) or spooled != len(files):
        raise RuntimeError(f"node recorded {got} and spooled {spooled} of {len(files)} instances")
    return {"seconds": round(seconds, 3), "instances_per_s": round(len(files) / seconds, 2),
            "results_during_ingest": triaged}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="instances per transfer syntax")
    ap.add_argument("--distinct", type=int, default=6, help="distinct encoded films")
    args = ap.parse_args()
    model, model_kind = C.model_under_test()
    work = C.tempdir("cxrt-bench-ingest-")
    try:
        C.note(f"ingest: encoding {args.distinct} films x {len(SYNTAXES)} syntaxes")
        bases = C.base_films(work, list(SYNTAXES.values()), args.distinct)
        out: dict = {"benchmark": "ingest", "n_per_syntax": args.n,
                     "film": f"{C.FILM_ROWS}x{C.FILM_COLS} 16-bit DX, {args.distinct} distinct NIH films upscaled, new UIDs per instance",
                     "sender": "dcmtk storescu, one association per run",
                     "reference": f"dcmtk storescp +xa {' '.join(STORESCP_OPTIONS)} writing to disk (no fsync)",
                     "node": "cxr-triage serve: spool fsync+rename, SQLite WAL synchronous=FULL, audit log; worker idle (quiet period longer than the run)",
                     "node_stow": f"the same node over STOW-RS: {STOW_BATCH} instances per request, one HTTP session",
                     "model": model_kind, "syntaxes": {}}
        for k, (name, ts) in enumerate(SYNTAXES.items()):
            files = C.clone_instances(bases[ts], work / name, args.n)
            mb = sum(p.stat().st_size for p in files) / 1e6
            subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)  # warm cache
            C.note(f"ingest {name}: {args.n} instances, {mb:.0f} MB")
            order = ["storescp", "node", "node_stow"] if k % 2 == 0 else ["node_stow", "node", "storescp"]
            res = {}
            for who in order:
                res[who] = (to_storescp(files, ts, work) if who == "storescp"
                            else to_node(files, ts, work, model, stow=who == "node_stow"))
                C.note(f"  {who}: {res[who]['instances_per_s']} instances/s")
            out["syntaxes"][name] = {
                "transfer_syntax": ts, "mean_instance_mb": round(mb / len(files), 2),
                "storescp": res["storescp"], "node": res["node"], "node_stow": res["node_stow"],
                "ratio_node_vs_storescp": C.ratio(res["node"]["instances_per_s"],
                                                  res["storescp"]["instances_per_s"]),
                "ratio_stow_vs_dimse": C.ratio(res["node_stow"]["instances_per_s"],
                                               res["node"]["instances_per_s"])}
            C.rmtree(work / name)
        ratios = [v["ratio_node_vs_storescp"] for v in out["syntaxes"].values()]
        out["ratio_node_vs_storescp_min"] = min(ratios)
        out["ratio_stow_vs_dimse_min"] = min(v["ratio_stow_vs_dimse"] for v in out["syntaxes"].values())
        out["target_ratio"] = 0.5
        out["target_met"] = min(ratios) >= 0.5
        out["machine"] = C.machine()
        C.emit(out)
    finally:
        C.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
