"""Disk full: the node's whole state dir (spool, job store, results, audit) on a small tmpfs.

While the filesystem is full the node must answer Out of Resources (0xA700), never Success,
keep answering C-ECHO, and keep what it already acknowledged. The filesystem stays full for
longer than the worker's retry schedule (so a study that falls due meanwhile is tried several
times). Once space returns the sender's retries are stored, and every acknowledged instance
(before, during and after) reaches the destination in its study's result.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from support.reliability_harness import (
    SUMMARY,
    NodeProc,
    RecordingSCP,
    Sender,
    account,
    base_films,
    contexts_for,
    echo,
    film_pngs,
    free_port,
    make_studies,
    phi_hits,
    wait_for,
    write_config,
)

from cxr_triage.dicom_node.delivery.scu import associate

FULL_FOR_S = 16.0   # longer than three triage retries of the worker


@contextmanager
def small_filesystem(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` mounted at ``path`` (root only); skips with the reason otherwise."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("disk-full test needs root to mount a small tmpfs (mount -t tmpfs)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0750", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the disk-full test: {r.stderr.strip() or r.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> int:
    """Write zeros into ``path`` until the filesystem refuses (ENOSPC); returns bytes written."""
    total = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 4096, 1):
            buf = b"\0" * chunk
            while True:
                try:
                    n = os.write(fd, buf)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                total += n
                if n < chunk:
                    break
    finally:
        os.close(fd)
    return total


@pytest.mark.reliability
def test_disk_full_answers_a700_and_loses_nothing(tmp_path: Path, tiny_model: Path, shared_data: Path) -> None:
    bases = base_films(film_pngs(shared_data, 3))
    before, during, after = (make_studies(bases, 1, 3, offset=i) for i in range(3))
    dest = RecordingSCP(free_port()).start()
    port = free_port()
    cfg = write_config(tmp_path / "node.toml", port, tiny_model,
                       delivery={"destinations": [dest.destination]})
    with small_filesystem(tmp_path / "state", 24):
        node = NodeProc(cfg, port).start()
        filler = tmp_path / "state" / "filler.bin"
        try:
            sender = Sender(port, contexts_for(ds for s in before + during + after for ds in s))
            sender.send_all(before, timeout=60)
            assert all(sender.status[str(ds.SOPInstanceUID)] == 0 for ds in before[0])

            fill(filler)                                   # the disk is full now
            t_full = time.monotonic()
            refusals, echoes = 0, 0
            ae_statuses: set[int | None] = set()
            while time.monotonic() - t_full < FULL_FOR_S:
                for ds in during[0]:
                    uid = str(ds.SOPInstanceUID)
                    if sender.status.get(uid) == 0:
                        continue
                    st = _store_once(sender, ds)
                    ae_statuses.add(st)
                    refusals += st == 0xA700
                echoes += echo(port)
                time.sleep(2.0)
            assert ae_statuses <= {0x0000, 0xA700}, [hex(s) if s is not None else s for s in ae_statuses]
            assert refusals >= 3 and echoes >= 3
            assert node.alive

            filler.unlink()                                # space is back
            sender.send_all(during + after, timeout=120)   # the PACS retries what got A700
            acked = sender.acked()
            assert len(acked) == 9
            wait_for(lambda: not account(acked, node, dest).lost, 120, 0.5,
                     "every acknowledged instance delivered after the disk filled up")
            time.sleep(1.0)
            assert node.stop() == 0, node.tail()
            acc = account(acked, node, dest)
            assert acc.problems == [] and acc.lost == [], acc
            log = node.log.read_text()
            assert "Out of Resources" in log
            assert phi_hits([node.log, node.state_dir / "audit.jsonl"]) == []
            SUMMARY.record("disk_full", instances_sent=len(sender.status), acknowledged=acc.acknowledged,
                           delivered=acc.delivered, lost=len(acc.lost), duplicates=acc.duplicates,
                           answered_a700=refusals, full_for_s=FULL_FOR_S, echoes_answered_while_full=echoes)
        finally:
            node.kill()
            dest.stop()


def _store_once(sender: Sender, ds) -> int | None:
    """One C-STORE on its own association; the status goes into the sender's record."""
    ae = sender._ae()
    uid = str(ds.SOPInstanceUID)
    sender.study_of[uid] = str(ds.StudyInstanceUID)
    assoc = associate(ae, "127.0.0.1", sender.port, ae_title="CXRTRIAGE")
    assert assoc.is_established, "the node stopped accepting associations while its disk was full"
    try:
        st = assoc.send_c_store(ds)
        code = getattr(st, "Status", None) if st else None
    finally:
        if assoc.is_established:
            assoc.release()
    sender.status[uid] = code
    sender.sent += 1
    return code
