"""run_all's step runner: a step past its time limit takes everything it started with it
(its own process group, and processes in sessions of their own like the node and storescp),
and a step's JSON is found even when something printed before it.

Tiny dummy scripts stand in for the benchmarks; processes are looked up in /proc (psutil is
not a dependency). A zombie (exited, waiting for its new parent to reap it) counts as gone.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import run_all  # noqa: E402  (bench/ is not a package)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
# prepended to the dummy scripts: record "pid start-time" of the processes they start, while alive
RECORD = """
def record(path, *procs):
    with open(path, "w") as fh:
        for p in procs:
            stat = open(f"/proc/{p.pid}/stat").read()
            fh.write(f"{p.pid} {stat.rpartition(')')[2].split()[19]}\\n")
"""


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time), None when the process is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _alive(pid: int, started: str) -> bool:
    return _start_time(pid) == started  # the same process (not a reused pid)


def _gone(pids: dict[int, str], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(pid, st) for pid, st in pids.items()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(RECORD + textwrap.dedent(body))
    return path


def _read_pids(path: Path) -> dict[int, str]:
    assert path.exists(), "the dummy step did not get as far as starting its children"
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return {int(pid): started for pid, started in rows}


@pytest.mark.parametrize("ignores_sigterm", [False, True], ids=["exits-on-sigterm", "ignores-sigterm"])
def test_a_step_past_its_limit_leaves_no_process_behind(tmp_path: Path, ignores_sigterm: bool) -> None:
    """Grandchildren in the step's group and in a session of their own are both stopped, also
    when the step ignores SIGTERM (SIGKILL after the grace period, then the sweep)."""
    pids_file = tmp_path / "pids.txt"
    script = _script(tmp_path, "dummy_hang.py", f"""
        import signal, subprocess, sys, time
        if {ignores_sigterm!r}:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        same_group = subprocess.Popen({SLEEPER!r})
        own_session = subprocess.Popen({SLEEPER!r}, start_new_session=True)  # like the node
        record({str(pids_file)!r}, same_group, own_session)
        print("started", file=sys.stderr, flush=True)
        time.sleep(600)
    """)
    result, seconds = run_all.run_one("dummy", str(script), [], limit=3, grace=1)
    assert result["error"] == "timed out after 3 s"
    assert "started" in result["stderr_tail"]
    assert seconds < 60
    pids = _read_pids(pids_file)
    assert len(pids) == 2 and _gone(pids), "a grandchild outlived its step"
    # the one in its own session was not in the step's group: the sweep found and stopped it
    own_session = list(pids)[1]
    assert [int(e.split()[0]) for e in result["leftover_processes"]] == [own_session]


def test_a_bench_helper_child_is_stopped_by_the_script_itself_on_sigterm(tmp_path: Path) -> None:
    """bench/_procs.spawn children (node, storescp) run in sessions of their own and are
    stopped by the script's atexit hook when run_all's SIGTERM ends it: nothing left to sweep."""
    pids_file = tmp_path / "pids.txt"
    script = _script(tmp_path, "dummy_peer.py", f"""
        import sys, time
        sys.path.insert(0, {str(BENCH)!r})
        import _procs
        peer = _procs.spawn({SLEEPER!r})
        record({str(pids_file)!r}, peer)
        time.sleep(600)
    """)
    # the limit leaves time to start Python and import _procs on a loaded machine
    step = run_all.run_step([sys.executable, str(script)], limit=20, grace=10)
    assert step.timed_out and step.seconds < 90
    pids = _read_pids(pids_file)
    assert len(pids) == 1 and _gone(pids)
    assert step.leftover_processes == [], "the script's own cleanup should have stopped its peer"


def test_a_step_that_ends_normally_still_has_its_strays_stopped(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids.txt"
    script = _script(tmp_path, "dummy_stray.py", f"""
        import json, subprocess
        stray = subprocess.Popen({SLEEPER!r}, start_new_session=True)
        record({str(pids_file)!r}, stray)
        print(json.dumps({{"benchmark": "dummy"}}))
    """)
    result, _ = run_all.run_one("dummy", str(script), [], limit=60, grace=1)
    assert result["benchmark"] == "dummy"
    pids = _read_pids(pids_file)
    assert len(result["leftover_processes"]) == 1 and _gone(pids)


def test_noise_before_the_json_is_tolerated_and_garbage_reports_stderr(tmp_path: Path) -> None:
    noisy = _script(tmp_path, "dummy_noisy.py", """
        import json, sys
        print("Loaded pretrained weights for efficientnet-lite0")   # what model_runtime printed
        print("{not json")
        print(json.dumps({"benchmark": "dummy", "value": 1.5}))
    """)
    result, _ = run_all.run_one("noisy", str(noisy), [], limit=60, grace=1)
    assert result == {"benchmark": "dummy", "value": 1.5}

    indented = _script(tmp_path, "dummy_indented.py", """
        import json
        print(json.dumps({"benchmark": "dummy", "nested": {"a": 1}}, indent=2))
    """)
    assert run_all.run_one("indented", str(indented), [], limit=60, grace=1)[0]["nested"] == {"a": 1}

    garbage = _script(tmp_path, "dummy_garbage.py", """
        import sys
        print("no json here")
        print("onnxruntime said something on stderr", file=sys.stderr)
    """)
    result, _ = run_all.run_one("garbage", str(garbage), [], limit=60, grace=1)
    assert result["error"] == "output is not one JSON object"
    assert "no json here" in result["stdout_tail"]
    assert "onnxruntime said something on stderr" in result["stderr_tail"]


def test_a_bench_script_stdout_carries_only_its_json(tmp_path: Path) -> None:
    """With stdout reserved (automatic for bench/ scripts), prints, C-level writes to fd 1 and
    child processes' output go to stderr; stdout is exactly one JSON object."""
    script = _script(tmp_path, "dummy_hygiene.py", f"""
        import os, subprocess, sys
        sys.path.insert(0, {str(BENCH)!r})
        import _common as C
        C.reserve_stdout_for_json()
        print("Loaded pretrained weights for efficientnet-lite0")
        os.write(1, b"a C library writing to fd 1\\n")
        subprocess.run(["echo", "a child process"], check=True)
        C.emit({{"benchmark": "dummy"}})
    """)
    step = run_all.run_step([sys.executable, str(script)], limit=60, grace=1)
    assert step.returncode == 0, step.stderr_tail
    assert step.stdout == '{"benchmark": "dummy"}\n'
    for noise in ("Loaded pretrained weights", "a C library", "a child process"):
        assert noise in step.stderr_tail


def test_time_limits_leave_headroom() -> None:
    """Each limit is at least 3.5x the step's wall time on the quiet machine (bench/results)."""
    import json

    quiet = json.loads((BENCH / "results" / "latest.json").read_text())["wall_s"]
    for name, (_, _, limit) in run_all.BENCHMARKS.items():
        if name in quiet:
            assert limit >= 3.5 * quiet[name], (name, limit, quiet[name])
    assert os.environ.get(run_all.STEP_ENV) is None
