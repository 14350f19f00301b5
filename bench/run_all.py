"""Run every benchmark (``make bench``) and merge their JSON into bench/results/latest.json.

Each benchmark is a separate process run one after the other, so none disturbs another's
timings; each prints one JSON object. Sizes are chosen to finish in under 10 minutes on a
2-core machine; the merged file records the command, the machine, the commit and every
benchmark's wall time. A benchmark that fails is recorded with its error and the others run.
Prints the merged JSON object.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
import sys
import time
from pathlib import Path

import _common as C

# name -> (script, arguments, time limit in seconds)
BENCHMARKS: dict[str, tuple[str, list[str], int]] = {
    "model_runtime": ("model_runtime.py", ["--reps-b1", "12", "--reps-b8", "4"], 120),
    "decode": ("decode.py", ["--reps", "2"], 120),
    "ingest": ("ingest.py", ["--n", "250"], 240),
    "latency": ("latency.py", ["--n", "100"], 240),
    "memory": ("memory.py", ["--studies", "1000"], 400),
}


def run_one(name: str, script: str, args: list[str], limit: int) -> tuple[dict, float]:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(C.ROOT / "bench" / script), *args],
                              stdout=subprocess.PIPE, stderr=None, text=True, timeout=limit,
                              cwd=C.ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {limit} s"}, time.perf_counter() - start
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": f"exit status {proc.returncode}", "stdout_tail": proc.stdout[-2000:]}, seconds
    try:
        return json.loads(proc.stdout), seconds
    except ValueError:
        return {"error": "output is not one JSON object", "stdout_tail": proc.stdout[-2000:]}, seconds


def summary(res: dict) -> dict:
    """The headline ratios and targets, one line each."""
    def get(*keys):
        cur = res
        for k in keys:
            if not isinstance(cur, dict) or k not in cur:
                return None
            cur = cur[k]
        return cur

    return {
        "ingest_ratio_node_vs_storescp_min": get("ingest", "ratio_node_vs_storescp_min"),
        "ingest_target_ge_0.5_met": get("ingest", "target_met"),
        "latency_p50_ms": get("latency", "latency_ms", "p50"),
        "latency_p95_ms": get("latency", "latency_ms", "p95"),
        "latency_target_p95_lt_1500_met": get("latency", "target_p95_met"),
        "latency_model_share": get("latency", "model_share_of_mean_total"),
        "latency_target_model_share_ge_0.5_met": get("latency", "target_model_share_met"),
        "model_ratio_onnx_vs_pytorch_min": get("model_runtime", "ratio_onnx_vs_pytorch_min"),
        "model_ratio_onnx_vs_pytorch_at_worker_threads": get("model_runtime", "ratio_onnx_vs_pytorch_at_worker_threads"),
        "model_target_ge_1.5_met": get("model_runtime", "target_met"),
        "memory_peak_rss_mb": get("memory", "peak_rss_mb"),
        "memory_target_peak_lt_600_met": get("memory", "target_peak_met"),
        "memory_growth_100_to_1000": get("memory", "rss_growth_100_to_last"),
        "memory_target_growth_le_5pct_met": get("memory", "target_growth_met"),
        "decode_ratio_reader_vs_dcmtk_median": get("decode", "ratio_reader_vs_dcmtk_median"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run these benchmarks only")
    ap.add_argument("--out", default=str(C.ROOT / "bench" / "results" / "latest.json"))
    args = ap.parse_args()
    started = _dt.datetime.now(_dt.timezone.utc)
    C.model_under_test()  # export the dev model first if the shipped one is missing
    results, walls = {}, {}
    t0 = time.perf_counter()
    for name, (script, extra, limit) in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        C.note(f"run_all: {name}")
        results[name], seconds = run_one(name, script, extra, limit)
        walls[name] = round(seconds, 1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=C.ROOT).stdout.strip()
    merged = {
        "command": "make bench  (.venv/bin/python bench/run_all.py)",
        "started_utc": started.isoformat(timespec="seconds"),
        "git_commit": commit,
        "machine": C.machine(),
        "note": "shared machine: absolute times are noisy; the headline figures are ratios "
                "against references measured side by side in the same run",
        "wall_s": {**walls, "total": round(time.perf_counter() - t0, 1)},
        "summary": summary(results),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n")
    tmp.replace(out)
    C.emit(merged)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
