"""Run every benchmark (``make bench``) and merge their JSON into bench/results/latest.json.

Each benchmark is a separate process run one after the other, so none disturbs another's
timings; each prints one JSON object. Sizes are chosen to finish in under 10 minutes on a
2-core machine; the merged file records the command, the machine, the commit and every
benchmark's wall time. A benchmark that fails is recorded with its error and the others run.
Prints the merged JSON object.

How a step is run (``run_step``):
- in a session of its own (``start_new_session``), with ``CXR_TRIAGE_BENCH_STEP=<token>`` in its
  environment, which every process it starts inherits (the node and storescp too, although
  bench/_common.py starts those in sessions of their own);
- past its time limit the step's process group gets SIGTERM (the script's ``finally`` blocks
  and atexit hook stop its peers), then after ``GRACE_S`` SIGKILL; when the step has ended
  (timed out or not), every process still carrying its token is stopped (SIGTERM, then
  SIGKILL) and listed in the result as ``leftover_processes``: nothing outlives its step;
- stdout is the step's JSON (the whole of it, else the last line that is a JSON object, so a
  stray line printed before it does not lose the figures); stderr is shown live and its tail
  goes into the result when the step fails.

Time limits: about 4x the step's wall time on the quiet 2-core dev machine
(bench/results/latest.json: model_runtime 15 s, decode 23 s, ingest 74 s, latency 55 s,
memory 203 s), at least 180 s. With another job beside it on 2 cores a step takes
roughly 2-2.5x as long; the rest is headroom for a first run (cold page cache, imports) and
a slower machine. They are a safety net against a hung step, not a speed target: a step that
needs them has already missed its figures. ``--limit-scale`` (or
``$CXR_TRIAGE_BENCH_LIMIT_SCALE``) multiplies them all on a machine slower still.
"""

from __future__ import annotations

import argparse
import collections
import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import _common as C
import _procs as procs

# name -> (script, arguments, time limit in seconds; see "Time limits" above)
BENCHMARKS: dict[str, tuple[str, list[str], int]] = {
    "model_runtime": ("model_runtime.py", ["--reps-b1", "12", "--reps-b8", "4"], 180),  # quiet: 15 s
    "decode": ("decode.py", ["--reps", "2"], 180),                                     # quiet: 23 s
    "ingest": ("ingest.py", ["--n", "250"], 360),                                      # quiet: 74 s
    "latency": ("latency.py", ["--n", "100"], 300),                                    # quiet: 55 s
    "memory": ("memory.py", ["--studies", "1000"], 1300),  # quiet: 203 s (AMD EPYC VM), 356 s (Intel Xeon VM)
    "large_instances": ("large_instances.py", [], 300),
    # issue 25: 1-3 nodes on one PostgreSQL vs one SQLite node; one round of 40 studies here
    # (bench/multinode.py alone: two rounds of 60, 250 s on the loaded 2-core machine): 117 s there
    "multinode": ("multinode.py", ["--n", "40", "--rounds", "1"], 600),
}


STEP_ENV = "CXR_TRIAGE_BENCH_STEP"
GRACE_S = 30.0          # SIGTERM -> SIGKILL: time for a step's finally blocks to stop its peers
STDERR_TAIL_LINES = 40


@dataclass
class Step:
    returncode: int | None
    stdout: str
    stderr_tail: str
    timed_out: bool
    seconds: float
    leftover_processes: list[str] = field(default_factory=list)


def _tee(stream: IO[str], tail: collections.deque) -> None:
    """Copy a step's stderr to ours as it comes, keeping its last lines."""
    for line in stream:
        tail.append(line)
        sys.stderr.write(line)
        sys.stderr.flush()


def _collect(stream: IO[str], into: list[str]) -> None:
    into.append(stream.read())


def tagged_processes(token: str) -> list[tuple[int, str]]:
    """(pid, command) of every live process whose environment carries ``STEP_ENV=token``."""
    needle = f"{STEP_ENV}={token}".encode()
    found = []
    for pid, proc_dir, _ in procs.live_processes():
        try:
            if needle not in (proc_dir / "environ").read_bytes().split(b"\0"):
                continue
            cmd = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours
            continue
        found.append((pid, cmd.strip()[:200]))
    return found


def sweep(token: str, grace: float = 5.0) -> list[str]:
    """Stop every process left behind by the step ``token``: SIGTERM, then SIGKILL."""
    seen: dict[int, str] = {}
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    while True:
        left = tagged_processes(token)
        if not left:
            break
        for pid, cmd in left:
            seen.setdefault(pid, cmd)
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL and time.monotonic() > deadline + 10:
                break
            sig = signal.SIGKILL
        time.sleep(0.1)
    return [f"{pid} {cmd}" for pid, cmd in seen.items()]


def run_step(cmd: list[str], limit: float, grace: float = GRACE_S, cwd: Path | None = None) -> Step:
    """Run one step (see the module docstring): own session, time limit, nothing left behind."""
    token = uuid.uuid4().hex
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", cwd=cwd, start_new_session=True,
                            env={**os.environ, STEP_ENV: token})
    out: list[str] = []
    tail: collections.deque = collections.deque(maxlen=STDERR_TAIL_LINES)
    readers = [threading.Thread(target=_collect, args=(proc.stdout, out), daemon=True),
               threading.Thread(target=_tee, args=(proc.stderr, tail), daemon=True)]
    for t in readers:
        t.start()
    timed_out = False
    try:
        if not procs.wait_exited(proc.pid, limit):
            timed_out = True
            C.note(f"run_all: past {limit:.0f} s: SIGTERM to the step's process group")
            procs.stop_group(proc, grace)
    finally:
        if proc.returncode is None:
            if procs.wait_exited(proc.pid, 0.0):
                proc.wait()                 # ended by itself
            else:
                procs.stop_group(proc, grace)   # run_all itself interrupted (Ctrl-C, SIGTERM)
        leftovers = sweep(token)            # whatever the step started and left running
        for t in readers:
            t.join(10.0)
    return Step(proc.returncode, "".join(out), "".join(tail)[-4000:], timed_out,
                time.perf_counter() - start, leftovers)


def parse_json_output(stdout: str) -> dict | None:
    """The step's JSON object: the whole stdout, else its last line that is a JSON object."""
    exact = _json_object(stdout)
    if exact is not None:
        return exact
    for line in reversed(stdout.splitlines()):
        found = _json_object(line) if line.strip().startswith("{") else None
        if found is not None:
            C.note("run_all: stdout carried more than the JSON object; kept its last JSON line")
            return found
    return None


def _json_object(text: str) -> dict | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def run_one(name: str, script: str, args: list[str], limit: float,
            grace: float = GRACE_S) -> tuple[dict, float]:
    """(the step's JSON or an error record, wall seconds); ``script`` relative to bench/."""
    step = run_step([sys.executable, str(C.ROOT / "bench" / script), *args], limit, grace, cwd=C.ROOT)
    extra: dict[str, Any] = {"leftover_processes": step.leftover_processes} if step.leftover_processes else {}
    if step.leftover_processes:
        C.note(f"run_all: {name} left {len(step.leftover_processes)} process(es) behind, stopped: "
               + "; ".join(step.leftover_processes))
    failed = {"stdout_tail": step.stdout[-2000:], "stderr_tail": step.stderr_tail, **extra}
    if step.timed_out:
        return {"error": f"timed out after {limit:.0f} s", **failed}, step.seconds
    if step.returncode != 0:
        return {"error": f"exit status {step.returncode}", **failed}, step.seconds
    result = parse_json_output(step.stdout)
    if result is None:
        return {"error": "output is not one JSON object", **failed}, step.seconds
    return {**result, **extra}, step.seconds


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
        "multinode_ratios_vs_sqlite_1": get("multinode", "ratios_vs_sqlite_1"),
        "multinode_claim_latency_idle_p50_ms_3_nodes": get("multinode", "configs", "postgresql_3",
                                                           "claim_latency_ms", "idle", "p50"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run these benchmarks only")
    ap.add_argument("--out", default=str(C.ROOT / "bench" / "results" / "latest.json"))
    ap.add_argument("--limit-scale", type=float,
                    default=float(os.environ.get("CXR_TRIAGE_BENCH_LIMIT_SCALE", "1")),
                    help="multiply every step's time limit (default 1, or $CXR_TRIAGE_BENCH_LIMIT_SCALE)")
    args = ap.parse_args()
    started = _dt.datetime.now(_dt.timezone.utc)
    C.model_under_test()  # export the dev model first if the shipped one is missing
    results, walls, limits = {}, {}, {}
    t0 = time.perf_counter()
    for name, (script, extra, limit) in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        limits[name] = round(limit * args.limit_scale)
        C.note(f"run_all: {name} (time limit {limits[name]} s)")
        results[name], seconds = run_one(name, script, extra, limits[name])
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
        "time_limit_s": limits,
        "summary": summary(results),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=2) + "\n")
    tmp.replace(out)
    C.emit(merged, indent=2)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
