"""Crash: ``kill -9`` the node at random moments while 200 instances (40 studies) arrive.

A pynetdicom SCU plays the PACS (one association per study, retrying what got no status)
and a pynetdicom SCP the destination. The node is killed four times: in the middle of an
association, at a random moment of the sending, while a result's C-STORE waits for the
destination's answer (so the same result must be delivered again, same SOP Instance UID), and
at a random moment shortly after a restart. Afterwards every instance answered Success must be
referenced by its study's current result at the destination, and the destination must hold
no result the node does not stand behind. The random seed is in the summary
(set CXRT_RELIABILITY_SEED to replay one).
"""

from __future__ import annotations

import os
import random
import threading
import time
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
    run_in_thread,
    wait_for,
    write_config,
)

N_STUDIES, PER_STUDY = 40, 5


@pytest.mark.reliability
def test_kill_9_loses_nothing_acknowledged(tmp_path: Path, tiny_model: Path, shared_data: Path) -> None:
    seed = int(os.environ.get("CXRT_RELIABILITY_SEED", time.time_ns() % 2**31))
    rng = random.Random(seed)
    studies = make_studies(base_films(film_pngs(shared_data, 12)), N_STUDIES, PER_STUDY)
    dest = RecordingSCP(free_port()).start()
    port = free_port()
    cfg = write_config(tmp_path / "node.toml", port, tiny_model,
                       node={"allowed_calling_aets": ["RELSCU"], "quiet_period_s": 5.0},
                       delivery={"destinations": [dest.destination]})
    node = NodeProc(cfg, port).start()
    audit_path = node.state_dir / "audit.jsonl"
    sender = Sender(port, contexts_for(ds for s in studies for ds in s))
    kills: list[dict] = []
    audit_prefixes: list[bytes] = []

    def crash(moment: str) -> None:
        before = audit_path.read_bytes()
        mid = sender.in_assoc
        node.kill()
        audit_prefixes.append(before)
        kills.append({"moment": moment, "sender_in_association": mid,
                      "acknowledged_so_far": sender.acked_total})
        node.start()
        assert audit_path.read_bytes().startswith(before), "audit log rewritten across a restart"

    try:
        sending, send_errors = run_in_thread(lambda: sender.send_all(studies, timeout=400))

        # 1. in the middle of an association (some of the study already acknowledged)
        target = rng.randint(15, 45)
        wait_for(lambda: sender.acked_total >= target and sender.in_assoc
                 and 1 <= sender.acked_in_assoc <= PER_STUDY - 2,
                 120, 0.005, "the sender inside an association")
        crash("mid-association")

        # 2. a random moment of the sending
        target = rng.randint(90, 150)
        wait_for(lambda: sender.acked_total >= target or not sending.is_alive(), 240, 0.01, "progress")
        time.sleep(rng.uniform(0.0, 0.5))
        crash("random, while receiving")

        # 3. a result's C-STORE is stored at the destination but its answer never reaches the node
        held, release = threading.Event(), threading.Event()
        held_uid: list[str] = []

        def hold(rec) -> None:
            if rec.sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.88.") and not held_uid:
                held_uid.append(rec.sop_instance_uid)
                held.set()
                release.wait(15)

        dest.hold = hold
        assert held.wait(180), "no result was delivered to hold"
        crash("delivery awaiting the destination's answer")
        dest.hold = None
        release.set()

        # 4. a random moment shortly after a restart (recovery, triage or delivery)
        time.sleep(rng.uniform(0.2, 2.5))
        crash("random, after a restart")

        sending.join(400)
        assert not sending.is_alive() and not send_errors, send_errors
        acked = sender.acked()

        def settled() -> bool:
            return not account(acked, node, dest).lost

        wait_for(settled, 240, 1.0, "every acknowledged instance in a delivered result")
        time.sleep(2.0)                                 # would a stray or duplicate follow?
        assert node.stop() == 0, node.tail()
        acc = account(acked, node, dest)
        assert acc.problems == [] and acc.lost == [], (seed, acc)
        assert acc.delivered == acc.acknowledged == N_STUDIES * PER_STUDY
        # the held result was delivered again after the crash, under the same SOP Instance UID
        assert sum(r.sop_instance_uid == held_uid[0] for r in dest.srs()) >= 2
        assert len(kills) >= 2 and any(k["sender_in_association"] for k in kills), kills
        assert any(n >= 1 for n in sender.interrupted), "no association was cut after a Success"

        # audit: every acknowledged instance received, every delivered SR sent, by UID, AE, outcome
        events = node.audit()
        received = {e["sop_instance_uid"] for e in events if e.get("direction") == "received"
                    and e.get("outcome") == 0 and e.get("calling_ae") == "RELSCU"}
        assert set(acked) <= received
        sent_ok = {e["sop_instance_uid"] for e in events if e.get("direction") == "sent"
                   and e.get("outcome") == 0 and e.get("calling_ae") == "CXRTRIAGE"}
        assert {node.current_results()[s]["sr_uid"] for s in set(acked.values())} <= sent_ok
        text = audit_path.read_bytes()
        assert all(text.startswith(p) for p in audit_prefixes)

        assert phi_hits([node.log, audit_path]) == []
        SUMMARY.record(
            "crash", seed=seed, instances_sent=len(sender.status), c_store_requests=sender.sent,
            acknowledged=acc.acknowledged, delivered=acc.delivered, lost=len(acc.lost),
            duplicates=acc.duplicates, superseded_results_delivered=acc.superseded_delivered,
            crashes_survived=len(kills), kills=kills,
            associations_cut_after_success=sum(1 for n in sender.interrupted if n >= 1),
            studies=N_STUDIES, results_at_destination=len(dest.sr_uids_by_study()))
    finally:
        dest.hold = None
        node.kill()
        dest.stop()
