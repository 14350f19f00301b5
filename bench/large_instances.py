"""Memory of the serving process while it receives large instances at the same time.

Three ~200 MB instances (a real NIH film upscaled to 10,000 x 10,000, 16-bit, uncompressed,
each with its own UIDs) are sent at once by three dcmtk ``storescu`` processes, one
association each, to ``cxr-triage serve``. The triage worker is kept idle (a quiet period
longer than the run), so the figures are receiving alone. Taken from ``/proc/<pid>/status``
of the node: VmRSS once started (model loaded, idle) and VmHWM (peak RSS) after the three
C-STOREs were answered.

Headline: ``ratio_peak_to_data`` = peak RSS / (3 x instance size) — the issue's figure (it
includes the model and the Python runtime) — and ``ratio_increase_to_data`` = (peak RSS -
idle RSS) / (3 x instance size), what receiving itself costs. A node that holds each data set
in memory shows several times the data; one that streams it to disk, a small fraction.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import time
from pathlib import Path

import _common as C
import _peers as peers
import _procs as procs
from pydicom.uid import ExplicitVRLittleEndian


def stored(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
        return int(con.execute("SELECT COUNT(*) FROM instances").fetchone()[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=10000, help="rows = columns of each film (16-bit)")
    ap.add_argument("--n", type=int, default=3, help="instances sent at the same time")
    args = ap.parse_args()
    model, model_kind = C.model_under_test()
    work = C.tempdir("cxrt-bench-large-")
    node = None
    try:
        C.note(f"large_instances: encoding a {args.side} x {args.side} 16-bit film")
        (base,) = C.base_films(work / "base", [str(ExplicitVRLittleEndian)], 1, args.side,
                               args.side)[str(ExplicitVRLittleEndian)]
        files = C.clone_instances([base], work / "instances", args.n)
        C.rmtree(work / "base")
        sizes = [f.stat().st_size for f in files]
        port, state = procs.free_port(), work / "state"
        cfg = peers.write_node_config(work / "node.toml", port, model, state,
                                  node={"quiet_period_s": 1.0e7})  # worker idle
        node = peers.Node(cfg, port, work / "node.log").start()
        time.sleep(1.0)
        idle = node.rss_kb()
        C.note(f"large_instances: sending {args.n} x {sizes[0] / 1e6:.0f} MB at once")
        start = time.perf_counter()
        senders = [subprocess.Popen(peers.storescu_cmd([f], port, "-x="), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for f in files]
        outputs = [p.communicate(timeout=900)[0] for p in senders]
        seconds = time.perf_counter() - start
        failed = [o[-2000:] for p, o in zip(senders, outputs) if p.returncode != 0]
        if failed:
            raise RuntimeError(f"storescu failed: {failed}")
        n_stored = stored(state / "queue.sqlite3")
        if n_stored != len(files):
            raise RuntimeError(f"node stored {n_stored} of {len(files)} instances")
        after = node.rss_kb()
        data = sum(sizes)
        peak_kb, idle_kb = after["VmHWM"], idle["VmRSS"]
        C.emit({
            "benchmark": "large_instances",
            "process": "cxr-triage serve (worker idle), dcmtk storescu senders, one association each",
            "model": model_kind,
            "instances": f"{args.n} x {args.side}x{args.side} 16-bit DX uncompressed, sent concurrently",
            "instance_size_mb": round(sizes[0] / 1e6, 1),
            "data_mb": round(data / 1e6, 1),
            "seconds": round(seconds, 2),
            "rss_idle_mb": round(idle_kb / 1024, 1),
            "peak_rss_idle_mb": round(idle["VmHWM"] / 1024, 1),
            "peak_rss_mb": round(peak_kb / 1024, 1),
            "rss_after_mb": round(after["VmRSS"] / 1024, 1),
            "ratio_peak_to_data": C.ratio(peak_kb * 1024, data),
            "ratio_increase_to_data": C.ratio(max(0, peak_kb - idle_kb) * 1024, data),
            "machine": C.machine(),
        })
    finally:
        if node:
            node.stop(graceful=False)
        C.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
