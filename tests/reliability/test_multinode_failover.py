"""Failover: three ``cxr-triage serve`` nodes on one PostgreSQL, machines lost mid-run.

60 studies (2 instances each) are sent round robin over the three nodes, every fourth study
split across two nodes (its two instances over two associations to two nodes). One node is
SIGKILLed while it triages a study (stopped first, so that it cannot finish the study between
the check and the kill), another while one of its C-STOREs to the destination waits
for the answer, and the database is restarted once; the senders of a dead node move to the
next node (what a TCP load balancer does). The last node takes over the dead nodes' claims
once their leases run out. Afterwards every acknowledged instance must be referenced by its
study's current SR at the destination, with exactly one current result per study generation
and none lost. Spool and results are one folder all nodes share (docs/operations.md).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from support import reliability_harness as H
from support.postgres_server import PostgresServer, skip_reason, started_server

N_STUDIES, PER_STUDY, N_NODES, LEASE_S = 60, 2, 3, 3.0


class SharedStoreView:
    """What :func:`H.account` reads of a node, read from the shared PostgreSQL database."""

    def __init__(self, dsn: str):
        self.dsn = dsn

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row) as con:
            return list(con.execute(sql, args).fetchall())

    def current_results(self) -> dict[str, dict[str, Any]]:
        rows = self.rows("SELECT s.study_uid, s.state, s.result_id, o.sop_instance_uid AS sr_uid FROM studies s"
                         " LEFT JOIN result_objects o ON o.result_id=s.result_id AND o.sop_class_uid LIKE %s",
                         (H.SR_PREFIX + "%",))
        return {r["study_uid"]: r for r in rows}

    def result_srs(self) -> dict[str, tuple[str, int, int]]:
        rows = self.rows("SELECT o.sop_instance_uid, r.study_uid, r.id, r.superseded FROM result_objects o"
                         " JOIN results r ON r.id=o.result_id WHERE o.sop_class_uid LIKE %s", (H.SR_PREFIX + "%",))
        return {r["sop_instance_uid"]: (r["study_uid"], r["id"], r["superseded"]) for r in rows}

    def claim(self, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        """The first row of a claim query (None: none, or the database is down)."""
        try:
            rows = self.rows(sql, args)
        except psycopg.OperationalError:
            return None
        return rows[0] if rows else None

    def settled(self, studies: set[str]) -> bool:
        """Every study triaged, nothing left to send."""
        try:
            open_studies = self.rows("SELECT study_uid FROM studies WHERE state<>'triaged'")
            owed = self.rows("SELECT COUNT(*) AS n FROM deliveries WHERE state IN ('pending','sending')")
            known = {r["study_uid"] for r in self.rows("SELECT study_uid FROM studies")}
        except psycopg.OperationalError:
            return False
        return not open_studies and owed[0]["n"] == 0 and studies <= known

    def unsettled(self) -> str:
        """What keeps the run from settling: open studies and owed deliveries, as rows."""
        studies = self.rows("SELECT study_uid, state, generation, claimed_by, lease_until, retry_at, errors, last_error"
                            " FROM studies WHERE state<>'triaged'")
        owed = self.rows("SELECT id, state, claimed_by, lease_until, attempts, next_attempt_at, last_error"
                         " FROM deliveries WHERE state<>'delivered'")
        return f"now {time.time():.1f}\nstudies: {studies}\ndeliveries: {owed}"


def _nodes(tmp_path: Path, model: Path, dsn: str, dest: H.RecordingSCP) -> list[H.NodeProc]:
    shared = tmp_path / "shared"                  # the folder every node mounts: spool + results
    nodes = []
    for i in range(N_NODES):
        state = tmp_path / f"node{i}" / "state"
        state.mkdir(parents=True)
        for sub in ("spool", "results"):
            (shared / sub).mkdir(parents=True, exist_ok=True)
            (state / sub).symlink_to(shared / sub)
        port = H.free_port()
        cfg = H.write_config(tmp_path / f"node{i}" / "node.toml", port, model,
                           node={"allowed_calling_aets": ["RELSCU"], "quiet_period_s": 1.5},
                           delivery={"destinations": [dest.destination]},
                           store={"backend": "postgresql", "dsn": dsn, "node_name": f"node{i}",
                                  "lease_s": LEASE_S, "connect_timeout_s": 3.0})
        nodes.append(H.NodeProc(cfg, port))
    return nodes


def _stopped(pid: int) -> bool:
    """Every thread of ``pid`` in the stopped state (SIGSTOP is delivered asynchronously)."""
    try:
        states = [Path(t, "stat").read_text().rpartition(")")[2].split()[0]
                  for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return False
    return bool(states) and all(st in ("T", "t") for st in states)


def freeze_holder(view: SharedStoreView, nodes: list[H.NodeProc]) -> dict[str, Any] | None:
    """A study in triage whose node is now stopped (SIGSTOP) while it still holds the claim;
    None, and the node let go on, when it finished the study first (the study was found in
    triage, but it can be committed before the node stops: then there is nothing to take over)."""
    row = view.claim("SELECT study_uid, claimed_by FROM studies WHERE state='processing' LIMIT 1")
    if row is None:
        return None
    node = nodes[int(row["claimed_by"].removeprefix("node"))]
    if node.proc is None or not node.alive:
        return None
    os.kill(node.proc.pid, signal.SIGSTOP)
    H.wait_for(lambda: _stopped(node.proc.pid), 10, 0.01, "the node stopped")  # type: ignore[union-attr]
    time.sleep(0.3)  # a COMMIT sent just before the stop reaches the server meanwhile
    if view.claim("SELECT study_uid FROM studies WHERE study_uid=%s AND state='processing' AND claimed_by=%s",
                  (row["study_uid"], row["claimed_by"])):
        return row
    os.kill(node.proc.pid, signal.SIGCONT)
    return None


def _wait_ready(node: H.NodeProc, timeout: float = 120.0) -> None:
    """Until ``node`` answers C-ECHO; a node that exits meanwhile fails at once, with its log."""
    deadline = time.monotonic() + timeout
    while not node.ready():
        if not node.alive or time.monotonic() > deadline:
            state = "exited" if not node.alive else f"not ready after {timeout:.0f} s"
            raise AssertionError(f"{node.config.parent.name} {state}:\n{node.tail(60)}")
        time.sleep(0.3)


def _round_robin(studies: list[list[Any]]) -> list[list[list[Any]]]:
    """Per node, the study parts it is sent: study k to node k % 3, every fourth split with
    its second instance to the next node."""
    parts: list[list[list[Any]]] = [[] for _ in range(N_NODES)]
    for k, study in enumerate(studies):
        if k % 4 == 3:
            parts[k % N_NODES].append(study[:1])
            parts[(k + 1) % N_NODES].append(study[1:])
        else:
            parts[k % N_NODES].append(study)
    return parts


class DeliveryTrap:
    """Holds the first SR C-STORE after :meth:`arm` until :meth:`release` (its node is
    killed meanwhile, so the C-STORE never gets its answer)."""

    def __init__(self) -> None:
        self.armed = threading.Event()
        self.caught: H.Receipt | None = None
        self.held = threading.Event()
        self._go = threading.Event()

    def arm(self) -> None:
        self.armed.set()

    def __call__(self, rec: H.Receipt) -> None:
        if self.armed.is_set() and self.caught is None and rec.sop_class_uid.startswith(H.SR_PREFIX):
            self.caught = rec
            self.held.set()
            self._go.wait(30)

    def release(self) -> None:
        self._go.set()


@pytest.mark.slow
@pytest.mark.reliability
@pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
def test_three_nodes_survive_losing_two_and_a_database_restart(tmp_path: Path, tiny_model: Path,
                                                             shared_data: Path) -> None:
    studies = H.make_studies(H.base_films(H.film_pngs(shared_data, 6)), N_STUDIES, PER_STUDY)
    server: PostgresServer = started_server()
    dest = H.RecordingSCP(H.free_port()).start()
    trap = DeliveryTrap()
    dest.hold = trap
    view = SharedStoreView(server.dsn)
    nodes = _nodes(tmp_path, tiny_model, server.dsn, dest)
    kills: list[dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        for n in nodes:
            n.spawn()
        for n in nodes:
            _wait_ready(n)
        contexts = H.contexts_for(ds for s in studies for ds in s)
        senders = [H.Sender(n.port, contexts) for n in nodes]
        threads = [H.run_in_thread(lambda s=s, p=p: s.send_all(p, timeout=150))
                   for s, p in zip(senders, _round_robin(studies))]

        def acked() -> int:
            return sum(s.acked_total for s in senders)

        def kill(name: str, moment: str) -> None:
            i = int(name.removeprefix("node"))
            nodes[i].kill()
            alive = next(j for j in range(N_NODES) if nodes[j].alive)
            for s in senders:                     # the load balancer stops sending there
                if s.port == nodes[i].port:
                    s.port = nodes[alive].port
            kills.append({"node": name, "moment": moment, "acknowledged_so_far": acked()})

        # 1. a node while it triages a study
        H.wait_for(lambda: acked() >= 30, 120, 0.05, "30 instances acknowledged")
        triaging = H.wait_for(lambda: freeze_holder(view, nodes), 60, 0.01, "a study in triage")
        kill(triaging["claimed_by"], "triaging")              # SIGKILL ends a stopped process too

        # 2. another node while its C-STORE of an SR waits for the destination's answer
        trap.arm()
        H.wait_for(trap.held.is_set, 120, 0.05, "an SR C-STORE in flight")
        assert trap.caught is not None
        sending = H.wait_for(lambda: view.claim(
            "SELECT id, claimed_by FROM deliveries WHERE state='sending' AND sop_instance_uid=%s",
            (trap.caught.sop_instance_uid,)), 30, 0.05, "the node sending it")
        kill(sending["claimed_by"], "delivering")
        trap.release()

        # 3. the database, once
        restarted_at = acked()
        server.restart(down_s=2.0)

        for th, errors in threads:
            th.join(160)
            assert not th.is_alive() and not errors, errors
        acked_uids = {u: st for s in senders for u, st in s.acked().items()}
        try:
            H.wait_for(lambda: view.settled(set(acked_uids.values())), 120, 0.5, "every study triaged and sent")
        except TimeoutError:
            alive = [n for n in nodes if n.alive]
            raise AssertionError(f"not settled: {view.unsettled()}\n{alive[0].tail(80) if alive else ''}") from None
        acc = H.account(acked_uids, view, dest)  # type: ignore[arg-type]
        doubled = view.rows("SELECT study_uid, generation FROM results WHERE superseded=0"
                            " GROUP BY study_uid, generation HAVING COUNT(*)>1")
        figures = {"studies": N_STUDIES, "instances_sent": N_STUDIES * PER_STUDY,
                   "c_store_requests": sum(s.sent for s in senders), "acknowledged": acc.acknowledged,
                   "kills": len(kills), "kill_moments": kills, "database_restarts": 1,
                   "acknowledged_at_database_restart": restarted_at,
                   "current_results": sum(1 for r in view.current_results().values() if r["result_id"]),
                   "results_made": len(view.rows("SELECT id FROM results")),
                   "duplicate_current_results": len(doubled), "sr_resends_same_uid": acc.duplicates,
                   "delivered": acc.delivered, "lost": len(acc.lost), "problems": acc.problems[:10],
                   "seconds": round(time.monotonic() - t0, 1)}
        H.SUMMARY.record("multinode_failover", **figures)
        print("multinode failover:", figures)
        assert len(kills) == 2 and {k["node"] for k in kills} != {kills[0]["node"]}
        assert acc.acknowledged == N_STUDIES * PER_STUDY
        assert not acc.problems and not acc.lost and not doubled
        assert figures["current_results"] == N_STUDIES
        # the dead nodes' claims were taken over by a live node
        taken = view.rows("SELECT claimed_by FROM studies WHERE study_uid=%s", (triaging["study_uid"],))
        resent = view.rows("SELECT claimed_by, state FROM deliveries WHERE id=%s", (sending["id"],))
        assert taken[0]["claimed_by"] != triaging["claimed_by"]
        assert resent[0]["state"] == "delivered" and resent[0]["claimed_by"] != sending["claimed_by"]
    finally:
        trap.release()
        for n in nodes:
            n.stop(10)
        dest.stop()
        server.destroy()
