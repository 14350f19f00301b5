"""Destination outage: results wait with bounded exponential back-off, across restarts.

The destination is down while four studies arrive; the node is restarted during the outage
twice (SIGTERM, then ``kill -9``). When the destination comes back every result arrives within
one capped back-off interval (plus processing), once per study. The attempt log in the job
store shows the schedule: initial * 2^(n-1), capped at ``retry_max_s``, counted on across
restarts, never faster and never slower than that.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest
from support.reliability_harness import (
    SUMMARY,
    NodeProc,
    RecordingSCP,
    Sender,
    account,
    base_films,
    contexts_for,
    film_pngs,
    free_port,
    make_studies,
    phi_hits,
    wait_for,
    write_config,
)

INITIAL_S, MAX_S = 0.5, 2.0
SLACK_S = 3.0          # poll interval, a refused connection, process scheduling on a busy CI box


def _attempts(node: NodeProc) -> dict[int, list[dict]]:
    rows = node.db("SELECT a.delivery_id, a.at, a.ok FROM attempts a ORDER BY a.delivery_id, a.at")
    out: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        out[r["delivery_id"]].append(r)
    return out


@pytest.mark.reliability
def test_results_wait_for_the_destination_with_bounded_back_off(tmp_path: Path, tiny_model: Path,
                                                                  shared_data: Path) -> None:
    studies = make_studies(base_films(film_pngs(shared_data, 3)), 4, 3)
    dest = RecordingSCP(free_port())                     # down: nothing listens on its port yet
    port = free_port()
    cfg = write_config(tmp_path / "node.toml", port, tiny_model,
                       delivery={"destinations": [dest.destination], "retry_initial_s": INITIAL_S,
                                 "retry_max_s": MAX_S, "dead_letter_after_s": 3600.0})
    node = NodeProc(cfg, port).start()
    downtime: list[tuple[float, float]] = []
    try:
        sender = Sender(port, contexts_for(ds for s in studies for ds in s))
        sender.send_all(studies, timeout=120)
        acked = sender.acked()
        assert len(acked) == 12

        def attempts_at_least(n: int) -> bool:
            rows = node.db("SELECT attempts FROM deliveries")
            return len(rows) == len(studies) and all(r["attempts"] >= n for r in rows)

        wait_for(lambda: attempts_at_least(3), 60, 0.3, "three failed attempts per result")
        t0 = time.time()
        assert node.stop() == 0, node.tail()               # graceful restart during the outage
        node.start()
        downtime.append((t0, time.time()))
        wait_for(lambda: attempts_at_least(5), 60, 0.3, "back-off reaching its cap")
        t0 = time.time()
        node.kill()                                         # and a crash during the outage
        node.start()
        downtime.append((t0, time.time()))
        wait_for(lambda: attempts_at_least(7), 60, 0.3, "attempts after the crash")
        assert node.db("SELECT COUNT(*) AS n FROM deliveries WHERE state='dead'")[0]["n"] == 0

        dest.start()                                        # the destination is back
        t_up = time.monotonic()
        wait_for(lambda: not account(acked, node, dest).lost, 60, 0.1, "results after the outage")
        arrival_s = time.monotonic() - t_up
        time.sleep(1.5)
        assert node.stop() == 0, node.tail()

        acc = account(acked, node, dest)
        assert acc.problems == [] and acc.lost == [] and acc.duplicates == 0, acc
        assert {s: sum(c.values()) for s, c in dest.sr_uids_by_study().items()} == {
            str(s[0].StudyInstanceUID): 1 for s in studies}
        assert arrival_s <= MAX_S + 2 * SLACK_S, f"results took {arrival_s:.1f} s after the destination returned"

        # the back-off schedule, from the attempt log
        gaps, max_gap = 0, 0.0
        for delivery_id, rows in _attempts(node).items():
            failed = [r for r in rows if not r["ok"]]
            assert rows[-1]["ok"] == 1 and len(failed) >= 7
            for n, (a, b) in enumerate(zip(failed, rows[1:]), start=1):
                if any(a["at"] <= up and b["at"] >= down for down, up in downtime):
                    continue                                 # the node was down in between
                expected = min(MAX_S, INITIAL_S * 2 ** (n - 1))
                gap = b["at"] - a["at"]
                assert expected - 0.05 <= gap <= expected + SLACK_S, (delivery_id, n, gap, expected)
                gaps += 1
                max_gap = max(max_gap, gap)
        assert gaps >= len(studies) * 4

        assert phi_hits([node.log, node.state_dir / "audit.jsonl"]) == []
        SUMMARY.record("destination_outage", instances_sent=len(sender.status),
                       acknowledged=acc.acknowledged, delivered=acc.delivered, lost=len(acc.lost),
                       duplicates=acc.duplicates, crashes_survived=1, graceful_restarts=1,
                       failed_attempts_per_result=min(len([r for r in rows if not r["ok"]])
                                                      for rows in _attempts(node).values()),
                       max_retry_gap_s=round(max_gap, 2), retry_max_s=MAX_S,
                       arrival_after_destination_up_s=round(arrival_s, 2))
    finally:
        node.kill()
        dest.stop()
