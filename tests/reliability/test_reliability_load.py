"""Load: 16 concurrent associations x 50 instances; zero failures, every result delivered.

The 800 instances belong to 40 studies of 20, dealt round-robin over the 16 associations, so
every study arrives over many associations at once (concurrent writes to the same study row
in the job store). Every C-STORE must be answered Success, every acknowledged instance must
be referenced by its study's current result at the destination, and the audit log must name
each of them. Throughput is recorded for information only (speed targets live in bench/).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from support.reliability_harness import (
    NODE_AET,
    SUMMARY,
    NodeProc,
    RecordingSCP,
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

from cxr_triage.dicom_node.delivery.scu import associate

ASSOCIATIONS, PER_ASSOCIATION, PER_STUDY = 16, 50, 20


@pytest.mark.reliability
def test_sixteen_concurrent_associations(tmp_path: Path, tiny_model: Path, shared_data: Path) -> None:
    total = ASSOCIATIONS * PER_ASSOCIATION
    studies = make_studies(base_films(film_pngs(shared_data, 12)), total // PER_STUDY, PER_STUDY)
    instances = [ds for study in studies for ds in study]
    lanes = [instances[a::ASSOCIATIONS] for a in range(ASSOCIATIONS)]   # each study over many lanes
    assert all(len(lane) == PER_ASSOCIATION for lane in lanes)
    contexts = contexts_for(instances)
    dest = RecordingSCP(free_port()).start()
    port = free_port()
    cfg = write_config(tmp_path / "node.toml", port, tiny_model,
                       node={"allowed_calling_aets": [f"LOAD{a:02d}" for a in range(ASSOCIATIONS)],
                             "max_associations": ASSOCIATIONS + 4, "quiet_period_s": 5.0,
                             # as patient as the senders (60 s): on a loaded 2-core CI machine 16
                             # busy-polling pynetdicom senders can starve one lane past 10 s
                             "network_timeout_s": 60.0},
                       delivery={"destinations": [dest.destination]})
    node = NodeProc(cfg, port).start()
    statuses: dict[str, int | None] = {}
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(ASSOCIATIONS)

    def lane(a: int) -> None:
        ae = AE(ae_title=f"LOAD{a:02d}")
        for sop, ts in contexts:
            ae.add_requested_context(sop, ts)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        start.wait()
        assoc = associate(ae, "127.0.0.1", port, ae_title=NODE_AET)
        if not assoc.is_established:
            with lock:
                errors.append(f"lane {a}: association not established")
            return
        try:
            for ds in lanes[a]:
                st = assoc.send_c_store(ds)
                with lock:
                    statuses[str(ds.SOPInstanceUID)] = getattr(st, "Status", None) if st else None
        finally:
            assoc.release()

    try:
        t0 = time.monotonic()
        threads = [threading.Thread(target=lane, args=(a,)) for a in range(ASSOCIATIONS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(300)
        receive_s = time.monotonic() - t0
        assert errors == []
        failures = {u: s for u, s in statuses.items() if s != 0x0000}
        assert len(statuses) == total and failures == {}, f"{len(failures)} failures: {failures}"
        acked = {str(ds.SOPInstanceUID): str(ds.StudyInstanceUID) for ds in instances}

        wait_for(lambda: not account(acked, node, dest).lost, 300, 1.0, "every result delivered")
        all_delivered_s = time.monotonic() - t0
        time.sleep(1.5)
        assert node.stop() == 0, node.tail()
        acc = account(acked, node, dest)
        assert acc.problems == [] and acc.lost == [] and acc.delivered == total, acc
        received = {e["sop_instance_uid"] for e in node.audit()
                    if e.get("direction") == "received" and e.get("outcome") == 0}
        assert set(acked) <= received
        assert phi_hits([node.log, node.state_dir / "audit.jsonl"]) == []
        SUMMARY.record("load", instances_sent=total, acknowledged=len(acked), delivered=acc.delivered,
                       lost=len(acc.lost), duplicates=acc.duplicates, failures=len(failures),
                       associations=ASSOCIATIONS, studies=len(studies),
                       superseded_results_delivered=acc.superseded_delivered,
                       receive_s=round(receive_s, 1),
                       receive_instances_per_s=round(total / receive_s, 1),
                       all_results_delivered_after_s=round(all_delivered_s, 1))
    finally:
        node.kill()
        dest.stop()
