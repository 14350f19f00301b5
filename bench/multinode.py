"""Several nodes on one PostgreSQL: studies/s with 1, 2 and 3 ``cxr-triage serve`` nodes
sharing one database, against one node on its embedded SQLite store, in the same run; and
claim latency (a study due -> claimed by a node's worker).

Every configuration gets the same studies: single-film DX studies (2500 x 2048 16-bit, explicit
VR little endian), sent round robin over its nodes by one dcmtk storescu per node, all at once;
each node sends its results to one pynetdicom SCP in this process (``latency.SRSink``), which
notes when each study's SR has arrived. studies/s = studies / (first storescu started -> last SR
in). The nodes are the real serving process with ``quiet_period_s`` 0 (a study is due once
received), ORT threads 2, no summary image; the PostgreSQL nodes share one spool/results folder
(docs/operations.md) and a fresh database per configuration; the server is Debian's
``postgresql`` started as in the tests (tests/support/postgres_server.py; skipped without it).
The configurations run one after another, ``--rounds`` times (every other round in the opposite
order); per configuration the round with the most studies/s is kept, every round is listed.

Claim latency: the worker's "study triaged" line gives ``claimed_at``; due is the study's
``last_received_at`` (quiet period 0). Measured twice: ``idle`` (a few studies sent one at a
time before the throughput run, one per node in turn: the poll and the ``FOR UPDATE SKIP
LOCKED`` claim) and ``loaded`` (the throughput run: mostly the wait for a free worker).
CPU: user+system seconds of every node process and of the PostgreSQL server over the
throughput run, against the machine's cores, says what limits the scaling.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as C
import _peers as peers
import _procs as procs
from latency import SRSink
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

sys.path.insert(0, str(C.ROOT / "tests"))  # the tests' throw-away PostgreSQL server (one definition)
from support.postgres_server import PostgresServer, skip_reason, started_server

TS = str(ExplicitVRLittleEndian)
CONFIGS = (("sqlite", 1), ("postgresql", 1), ("postgresql", 2), ("postgresql", 3))
TICK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- CPU accounting

def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds so far of ``pids`` (all their threads; Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])   # utime, stime (proc(5) fields 14, 15)
    return total / TICK


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far, every process (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]                       # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def server_pids(server: PostgresServer) -> list[int]:
    """The postmaster (first line of ``postmaster.pid``) and its children (the backends)."""
    try:
        master = int((server.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    return [master] + [pid for pid, _, f in procs.live_processes() if int(f[1]) == master]


def node_pids(nodes: list[peers.Node]) -> list[int]:
    return [pid for n in nodes if n.proc is not None for pid in procs.group_members(n.proc.pid)]


# ----------------------------------------------------------------------------- one configuration

class Cluster:
    """``count`` nodes on one store: ``sqlite`` (one node) or ``postgresql`` (``dsn``, one
    shared spool/results folder)."""

    def __init__(self, work: Path, backend: str, count: int, model: Path, sink: SRSink, dsn: str = ""):
        self.work, self.backend, self.dsn = work, backend, dsn
        self.nodes: list[peers.Node] = []
        shared = work / "shared"
        for i in range(count):
            state = work / f"node{i}" / "state"
            state.parent.mkdir(parents=True)
            store: dict[str, Any] = {"backend": backend}
            if backend == "postgresql":
                state.mkdir()
                for sub in ("spool", "results"):
                    (shared / sub).mkdir(parents=True, exist_ok=True)
                    (state / sub).symlink_to(shared / sub)
                store.update(dsn=dsn, node_name=f"node{i}")
            port = procs.free_port()
            cfg = peers.write_node_config(work / f"node{i}" / "node.toml", port, model, state,
                                          node={"quiet_period_s": 0.0}, store=store,
                                          delivery={"destinations": [sink.destination], "summary_image": False})
            self.nodes.append(peers.Node(cfg, port, work / f"node{i}" / "node.log"))

    def start(self) -> "Cluster":
        for node in self.nodes:
            node.start()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(graceful=False)

    def received(self) -> dict[str, float]:
        """Study Instance UID -> ``last_received_at`` (Unix s) from the store."""
        sql = "SELECT study_uid, last_received_at FROM studies"
        if self.backend == "sqlite":
            with sqlite3.connect(self.work / "node0" / "state" / "queue.sqlite3") as con:
                return dict(con.execute(sql).fetchall())
        import psycopg  # only the PostgreSQL configurations need the driver

        with psycopg.connect(self.dsn, autocommit=True) as con:
            return {uid: float(at) for uid, at in con.execute(sql).fetchall()}

    def claim_latencies_ms(self, studies: set[str]) -> list[float]:
        """Due (last received, quiet period 0) -> claimed, per study of ``studies``."""
        received = self.received()
        out = []
        for node in self.nodes:
            for rec in node.log_records("study triaged"):
                uid = rec.get("study_uid")
                if uid in studies and uid in received:
                    out.append(max(0.0, rec["claimed_at"] - received[uid]) * 1000)
        return out


def send_each(files: list[Path], cluster: Cluster, sink: SRSink) -> set[str]:
    """The warm-up / idle claim studies: one at a time, node after node, each to its SR."""
    uids = set()
    for i, path in enumerate(files):
        uid = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        node = cluster.nodes[i % len(cluster.nodes)]
        subprocess.run(peers.storescu_cmd([path], node.port, peers.STORESCU_TS[TS]), check=True,
                       capture_output=True, timeout=120)
        if sink.wait(uid, 60.0) is None:
            raise RuntimeError(f"no SR for idle study {i}:\n{node.tail()}")
        uids.add(uid)
    return uids


def send_round_robin(files: list[Path], uids: list[str], cluster: Cluster, sink: SRSink,
                     pids: list[int]) -> dict[str, Any]:
    """Every file at once, file i to node i mod n (one storescu per node); seconds to the last
    SR and the CPU seconds ``pids`` used meanwhile."""
    n = len(cluster.nodes)
    cpu0, ticks0, t0 = cpu_seconds(pids), machine_ticks(), time.time()
    senders = [subprocess.Popen(peers.storescu_cmd(files[k::n], node.port, peers.STORESCU_TS[TS]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for k, node in enumerate(cluster.nodes)]
    for proc in senders:
        _, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed ({proc.returncode}): {err.decode(errors='replace')[-1500:]}")
    arrived = [sink.wait(uid, 300.0) for uid in uids]
    if any(t is None for t in arrived):
        raise RuntimeError(f"{sum(t is None for t in arrived)} of {len(uids)} SRs missing")
    seconds = max(t for t in arrived if t is not None) - t0
    busy, total = (b - a for a, b in zip(ticks0, machine_ticks()))
    return {"seconds": seconds, "cpu_s": cpu_seconds(pids) - cpu0, "machine_busy": busy / max(1, total)}


def run_config(work: Path, backend: str, count: int, model: Path, sink: SRSink, server: PostgresServer | None,
               idle_files: list[Path], files: list[Path], uids: list[str], rnd: int = 0) -> dict[str, Any]:
    """One configuration, start to stop: its figures (``rnd``: the round, for the database name)."""
    dsn = ""
    if server is not None:
        name = f"bench_{backend}_{count}_r{rnd}"
        server.psql(f"CREATE DATABASE {name}")
        dsn = server.dsn.replace("dbname=cxr", f"dbname={name}")
    cluster = Cluster(work, backend, count, model, sink, dsn).start()
    try:
        idle = send_each(idle_files, cluster, sink)
        nodes_cpu = node_pids(cluster.nodes)
        db_cpu = server_pids(server) if server is not None else []
        cpu_db0 = cpu_seconds(db_cpu)
        run = send_round_robin(files, uids, cluster, sink, nodes_cpu)
        db_cpu_s = cpu_seconds(db_cpu) - cpu_db0
        loaded = cluster.claim_latencies_ms(set(uids))
        idle_ms = cluster.claim_latencies_ms(idle)
    finally:
        cluster.stop()
    cores = os.cpu_count() or 1
    return {"nodes": count, "store": backend, "seconds": round(run["seconds"], 2),
            "studies_per_s": round(len(uids) / run["seconds"], 2),
            "claim_latency_ms": {"idle": stats(idle_ms), "loaded": stats(loaded)},
            "cpu": {"nodes_cpu_s": round(run["cpu_s"], 1), "database_cpu_s": round(db_cpu_s, 1),
                    "nodes_cpu_s_per_study": round(run["cpu_s"] / len(uids), 3),
                    "our_share_of_cores": round((run["cpu_s"] + db_cpu_s) / (run["seconds"] * cores), 2),
                    "machine_busy_share": round(run["machine_busy"], 2)}}


def keep_best(kept: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The round with more studies/s (the less disturbed by other work on the machine), with
    every round's figure in ``studies_per_s_rounds``."""
    rounds = (kept or {}).get("studies_per_s_rounds", []) + [new["studies_per_s"]]
    best = new if kept is None or new["studies_per_s"] > kept["studies_per_s"] else kept
    return {**best, "studies_per_s_rounds": rounds}


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"p50": round(C.pct(values, 50), 1), "p95": round(C.pct(values, 95), 1),
            "max": round(max(values), 1), "n": len(values)}


# ----------------------------------------------------------------------------- the figures

def limits(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What bounds the scaling, from the CPU figures: the cores are the limit when the machine
    is kept busy (by the nodes, or by other work beside them) while more nodes add no studies/s;
    ``ceiling_studies_per_s`` is what the cores allow at one node's CPU seconds per study."""
    one, three = configs.get("postgresql_1"), configs.get("postgresql_3")
    cores = os.cpu_count() or 1
    out: dict[str, Any] = {"cores": cores}
    if not (one and three):
        return out
    per_study = one["cpu"]["nodes_cpu_s_per_study"]
    out.update({
        "node_cpu_s_per_study_1_node": per_study,
        "node_cpu_s_per_study_3_nodes": three["cpu"]["nodes_cpu_s_per_study"],
        "ceiling_studies_per_s": round(cores / per_study, 2) if per_study else None,
        "machine_busy_share_1_node": one["cpu"]["machine_busy_share"],
        "machine_busy_share_3_nodes": three["cpu"]["machine_busy_share"],
        "our_share_of_cores_1_node": one["cpu"]["our_share_of_cores"],
        "our_share_of_cores_3_nodes": three["cpu"]["our_share_of_cores"],
        "database_cpu_share_3_nodes": C.ratio(three["cpu"]["database_cpu_s"],
                                              three["cpu"]["nodes_cpu_s"] + three["cpu"]["database_cpu_s"])})
    if three["cpu"]["machine_busy_share"] >= 0.85:
        out["verdict"] = (
            "CPU: the machine's cores are busy (load average above the core count means other work "
            "beside the nodes); every node decodes its films and runs ONNX Runtime (2 threads) on "
            "the same cores, so more nodes on one machine share the CPU rather than add to it (what "
            "they gain is the CPU time they take from other work: our_share_of_cores). Nodes on "
            "separate machines each bring their own cores; the database's CPU share is the part "
            "that does not scale out.")
    else:
        out["verdict"] = ("not the CPU alone (the cores were not kept busy): the senders, "
                          "polling or the database")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60, help="single-film studies per configuration")
    ap.add_argument("--idle", type=int, default=6, help="studies sent one at a time first (idle claim latency)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over every configuration (best kept)")
    ap.add_argument("--distinct", type=int, default=4, help="distinct encoded films")
    args = ap.parse_args()
    why_not = skip_reason()
    if why_not:
        C.emit({"benchmark": "multinode", "skipped": why_not})
        return 0
    model, model_kind = C.model_under_test()
    work = C.tempdir("cxrt-bench-multinode-")
    server, sink = None, SRSink(procs.free_port())
    try:
        C.note(f"multinode: encoding {args.distinct} films")
        bases = C.base_films(work, [TS], args.distinct)[TS]
        files = C.clone_instances(bases, work / "studies", args.n)
        idle_files = C.clone_instances(bases, work / "idle", args.idle)
        uids = [str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in files]
        server = started_server()  # its own folder under /tmp: the postgres account must reach it
        configs: dict[str, dict[str, Any]] = {}
        for r in range(args.rounds):                 # round 2 in the opposite order: no config always first
            for backend, count in (CONFIGS if r % 2 == 0 else CONFIGS[::-1]):
                key = f"{backend}_{count}"
                C.note(f"multinode round {r + 1}: {count} node(s) on {backend}, {args.n} studies")
                sink.arrived.clear()
                got = run_config(work / f"{key}_r{r}", backend, count, model, sink,
                                 server if backend == "postgresql" else None, idle_files, files, uids, r)
                C.note(f"  {got['studies_per_s']} studies/s")
                configs[key] = keep_best(configs.get(key), got)
        base = configs["sqlite_1"]["studies_per_s"]
        C.emit({
            "benchmark": "multinode", "studies": args.n, "idle_studies": args.idle, "rounds": args.rounds,
            "figures": "per configuration the round with the most studies/s (every round in studies_per_s_rounds)", "model": model_kind,
            "film": f"{C.FILM_ROWS}x{C.FILM_COLS} 16-bit DX, explicit VR LE, one film per study",
            "path": "dcmtk storescu per node, round robin, all at once -> cxr-triage serve nodes "
                    "(quiet_period_s 0, ORT threads 2, no summary image) -> one pynetdicom SCP",
            "clock": "first storescu started -> last SR received",
            "database": "PostgreSQL (Debian package, one server on loopback, fsync on), fresh database per configuration",
            "configs": configs,
            "ratios_vs_sqlite_1": {k: C.ratio(v["studies_per_s"], base) for k, v in configs.items()},
            "scaling_limit": limits(configs),
            "machine": C.machine()})
    finally:
        sink.stop()
        if server is not None:
            server.destroy()
        C.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
