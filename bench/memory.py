"""Memory of the serving process (``cxr-triage serve``) with the model loaded.

1. RSS once started (model loaded, idle).
2. 1,000 single-film studies, sent by dcmtk storescu in chunks of 100, each chunk triaged and
   its results delivered (to a dcmtk storescp) before the next: RSS after every 100 studies;
   growth = RSS after 1,000 vs after 100. These films are small (512 x 512, 16-bit) so that
   1,000 studies fit the benchmark's time budget; the per-study objects (datasets, results,
   SR, summary image, job-store rows) are the same as for a full-size film.
3. Then realistic 2500 x 2048 16-bit films (uncompressed and JPEG Lossless) to reach the
   peak: VmHWM of the process over the whole run is the peak RSS.
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
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1


def done_count(db: Path) -> int:
    """Studies triaged whose every delivery has been delivered."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
        return con.execute(
            "SELECT COUNT(*) FROM studies s WHERE s.state='triaged' AND NOT EXISTS ("
            " SELECT 1 FROM deliveries d WHERE d.result_id=s.result_id AND d.state<>'delivered')"
        ).fetchone()[0]


def send(files: list[Path], port: int, ts_option: str) -> None:
    proc = subprocess.run(peers.storescu_cmd(files, port, ts_option), capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed ({proc.returncode}): {proc.stderr[-2000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--side", type=int, default=512, help="side of the small films")
    ap.add_argument("--large", type=int, default=6, help="full-size films sent at the end")
    args = ap.parse_args()
    model, model_kind = C.model_under_test()
    work = C.tempdir("cxrt-bench-memory-")
    node = sink = None
    try:
        small = C.base_films(work / "small", [str(ExplicitVRLittleEndian)], 4, args.side, args.side)
        files = C.clone_instances(small[str(ExplicitVRLittleEndian)], work / "studies", args.studies)
        sink_port, port, state = procs.free_port(), procs.free_port(), work / "state"
        sink = peers.start_storescp(work / "sink", sink_port, aet="PACS", extra=["--ignore"])
        cfg = peers.write_node_config(work / "node.toml", port, model, state,
                                  node={"quiet_period_s": 0.0},
                                  delivery={"destinations": [f"PACS@127.0.0.1:{sink_port}"],
                                            "summary_image": True})
        node = peers.Node(cfg, port, work / "node.log").start()
        time.sleep(1.0)
        idle = node.rss_kb()
        series = []
        start = time.perf_counter()
        for i in range(0, len(files), args.chunk):
            chunk = files[i:i + args.chunk]
            send(chunk, port, "-x=")
            target = i + len(chunk)
            procs.wait_for(lambda target=target: done_count(state / "queue.sqlite3") >= target, 600, 0.2,
                       f"{i + len(chunk)} studies triaged and delivered")
            rss = node.rss_kb()
            series.append({"studies": i + len(chunk), "rss_mb": round(rss["VmRSS"] / 1024, 1)})
            C.note(f"memory: {i + len(chunk)} studies, RSS {series[-1]['rss_mb']} MB")
        small_seconds = time.perf_counter() - start
        after_small = node.rss_kb()
        big = C.base_films(work / "large", [str(ExplicitVRLittleEndian), str(JPEGLosslessSV1)],
                           max(1, args.large // 2))
        n_done = len(files)
        for ts, paths in big.items():
            large = C.clone_instances(paths, work / f"large_{ts}", len(paths))
            send(large, port, peers.STORESCU_TS[ts])
            n_done += len(large)
            procs.wait_for(lambda n_done=n_done: done_count(state / "queue.sqlite3") >= n_done, 600, 0.2, "large films")
        final = node.rss_kb()
        at = {s["studies"]: s["rss_mb"] for s in series}
        first, last = series[0], series[-1]
        growth = (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"]
        peak = round(final["VmHWM"] / 1024, 1)
        C.emit({
            "benchmark": "memory",
            "process": "cxr-triage serve (ORT threads 2, summary_image on, delivery to dcmtk storescp)",
            "model": model_kind,
            "small_films": f"{args.side}x{args.side} 16-bit DX uncompressed, one film per study "
                           "(small to fit the time budget)",
            "large_films": f"{C.FILM_ROWS}x{C.FILM_COLS} 16-bit DX, {n_done - len(files)} films, "
                           "uncompressed and JPEG Lossless, sent after the small ones",
            "rss_idle_model_loaded_mb": round(idle["VmRSS"] / 1024, 1),
            "rss_after_studies_mb": at,
            "rss_growth_100_to_last": round(growth, 4),
            "studies_per_s_small": round(len(files) / small_seconds, 2),
            "rss_after_large_mb": round(final["VmRSS"] / 1024, 1),
            "peak_rss_mb": peak,
            "peak_rss_during_small_mb": round(after_small["VmHWM"] / 1024, 1),
            "targets": {"peak_rss_mb_below": 600, "growth_at_most": 0.05},
            "target_peak_met": peak < 600,
            "target_growth_met": growth <= 0.05,
            "machine": C.machine(),
        })
    finally:
        if node:
            node.stop(graceful=False)
        procs.stop_proc(sink)
        C.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
