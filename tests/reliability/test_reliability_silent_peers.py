"""Silent peers (issue 23, class 3): a destination that accepts TCP and never answers.

A hung PACS (its DICOM port accepts connections, nothing answers the A-ASSOCIATE-RQ) and a RIS
whose MLLP listener accepts and never reads are configured beside a healthy PACS, the silent
DICOM peer listed first. Every study's result must reach the healthy PACS in seconds, not after
the network time-out (30 s here): each destination is served by its own lane. SIGTERM must
then stop the node within 10 s, though its sends to the silent peers are still in flight; the
interrupted deliveries are not counted as attempts and stay owed.

The figures go to ``test-artifacts/reliability-summary.json`` (scenario ``silent_peers``).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from support.reliability_harness import (
    SUMMARY,
    NodeProc,
    RecordingSCP,
    Sender,
    base_films,
    contexts_for,
    film_pngs,
    free_port,
    make_studies,
    wait_for,
    write_config,
)

NETWORK_TIMEOUT_S = 30.0
RESULT_WITHIN_S = 8.0      # quiet period 1 s + triage + send, on a loaded 2-core machine
STOP_WITHIN_S = 10.0


class SilentPeer:
    """A TCP listener that accepts every connection and never sends or reads a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def __enter__(self) -> "SilentPeer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.mark.reliability
def test_a_silent_dicom_and_hl7_peer_never_delay_the_healthy_pacs_nor_the_stop(
        tmp_path: Path, tiny_model: Path, shared_data: Path) -> None:
    studies = make_studies(base_films(film_pngs(shared_data, 2)), 3, 1)
    port = free_port()
    with SilentPeer() as dicom_silent, SilentPeer() as hl7_silent, RecordingSCP(free_port()) as pacs:
        cfg = write_config(tmp_path / "node.toml", port, tiny_model,
                           node={"network_timeout_s": NETWORK_TIMEOUT_S},
                           delivery={"destinations": [f"HUNG@127.0.0.1:{dicom_silent.port}",
                                                      pacs.destination],
                                     "hl7_destinations": [f"RIS@127.0.0.1:{hl7_silent.port}"]})
        node = NodeProc(cfg, port).start()
        latencies: list[float] = []
        try:
            sender = Sender(port, contexts_for(ds for s in studies for ds in s))
            for study in studies:                  # one after another: each waits for its result
                sent_at = time.time()
                sender.send_all([study], timeout=60)
                uid = str(study[0].StudyInstanceUID)
                wait_for(lambda uid=uid: any(r.study_uid == uid for r in pacs.srs()), 60, 0.05,
                         "the result at the healthy PACS")
                got = min(r.at for r in pacs.srs() if r.study_uid == uid)
                latencies.append(round(got - sent_at, 2))
            assert dicom_silent.accepted and hl7_silent.accepted      # both were tried, and hang
            t0 = time.monotonic()
            rc = node.stop(timeout=30)
            stop_s = round(time.monotonic() - t0, 2)
        finally:
            node.kill()
    print(f"silent peers: healthy PACS result latency {latencies} s, SIGTERM stop {stop_s} s")
    SUMMARY.record("silent_peers", result_latency_s=latencies, sigterm_stop_s=stop_s,
                   network_timeout_s=NETWORK_TIMEOUT_S)
    assert max(latencies) < RESULT_WITHIN_S, latencies
    assert rc == 0, node.tail()
    assert stop_s < STOP_WITHIN_S, (stop_s, node.tail())
    owed = node.db("SELECT destination, state, attempts FROM deliveries WHERE destination NOT LIKE ?",
                   (pacs.destination,))
    assert owed and all(r["state"] in ("pending", "sending") for r in owed), owed
    assert all(r["attempts"] == 0 for r in owed), owed       # an interrupted send is no attempt
