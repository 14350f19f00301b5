"""Process control for the benchmarks: the peers' process groups, ports, waiting, clean exit.

Peers (node, storescp) run in a session of their own (:func:`spawn`), so that a signal meant for
the benchmark does not reach them half-way and stopping one stops everything it started
(:func:`stop_group`, Linux ``/proc`` and process groups). Importing this module makes SIGTERM and
SIGHUP raise SystemExit, so a benchmark stopped by run_all's time limit still runs its
``finally`` blocks and the atexit hook that stops its peers. Nothing here is imported by the worker.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable


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
