"""End-to-end latency: single-film studies sent one by one, C-STORE start to SR at the PACS.

The node runs as plain ``cxr-triage serve`` (its worker and deliverer log each stage's time
as data) with quiet period 0 and the shipped defaults otherwise (summary image on). Each
study is one realistic 2500 x 2048 16-bit DX film, alternately uncompressed and JPEG Lossless,
sent by dcmtk storescu; the result goes to a pynetdicom SCP in this process that notes when the
SR has fully arrived. The clock starts just before storescu is launched, so the figure includes
starting storescu and negotiating its association (an upper bound on the node's share). The
next study is sent once every result object of the last one has arrived (an idle node).
``--node-cli`` runs another tree's ``cxr-triage`` (e.g. an old commit's) under this harness.

Breakdown per study: receive (start -> spooled and recorded), claim wait (worker poll),
read (spooled file parsed), decode, gate, preprocess, model (pipeline ``timings_ms``),
SR build, summary image, save + heatmaps, commit, delivery wait (deliverer poll), send
(association + C-STORE of the result objects; the SR, delivered first, arrives during it).
A node that sends the SR before making the summary image (its worker logs ``summary_save``)
has the summary stages off the SR's path: reported under ``after_sr_ms``, not in the sum.
Result objects: the size of the summary image as stored (lossless JPEG-LS by default) against
its uncompressed RGB size, and the C-STORE time of each object (the deliverer's per-object
``object_ms``), SR and summary image.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import _common as C
import _peers as peers
import _procs as procs
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
#: what the node sends: Comprehensive 3D SR, its fallbacks Comprehensive and Enhanced SR, and
#: the Secondary Capture summary image
RESULT_CLASSES = (SR_PREFIX + "34", SR_PREFIX + "33", SR_PREFIX + "22", "1.2.840.10008.5.1.4.1.1.7")


class SRSink:
    """A pynetdicom storage SCP noting when each study's SR (and each object) has arrived.

    It accepts only the result classes (in every transfer syntax): pynetdicom deep-copies an
    acceptor's supported contexts for every association (``transport.RequestHandler``), which
    took ~60 ms of this process's CPU per association with every storage class in every
    syntax, counted in the node's ``send`` (a real PACS, Orthanc or dcmtk storescp, answers an
    association in ~6 ms)."""

    def __init__(self, port: int, aet: str = "PACS"):
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

        self.port, self.aet = port, aet
        self.arrived: dict[str, float] = {}
        self.objects: dict[str, int] = {}
        self.cond = threading.Condition()
        ae = AE(ae_title=aet)
        # a PACS that takes compressed objects as they are (the summary image is JPEG-LS)
        for uid in RESULT_CLASSES:
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event: Any) -> int:
        now = time.time()  # the whole dataset is in when the handler runs
        req = event.request
        study = str(event.dataset.StudyInstanceUID)
        with self.cond:
            if str(req.AffectedSOPClassUID).startswith(SR_PREFIX):
                self.arrived.setdefault(study, now)
            self.objects[study] = self.objects.get(study, 0) + 1
            self.cond.notify_all()
        return 0x0000

    def wait(self, study_uid: str, timeout: float) -> float | None:
        with self.cond:
            self.cond.wait_for(lambda: study_uid in self.arrived, timeout)
            return self.arrived.get(study_uid)

    def wait_objects(self, study_uid: str, count: int, timeout: float) -> bool:
        """Until ``count`` objects of the study have arrived (False on time-out)."""
        with self.cond:
            return self.cond.wait_for(lambda: self.objects.get(study_uid, 0) >= count, timeout)

    @property
    def destination(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"p50": round(C.pct(values, 50), 1), "p95": round(C.pct(values, 95), 1),
            "mean": round(sum(values) / len(values), 1)}


def breakdown(node: peers.Node, state: Path, sent: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per-stage times (ms) for every study from the job store and the node's timer lines."""
    stages: dict[str, dict[str, float]] = {uid: {} for uid in sent}
    con = sqlite3.connect(state / "queue.sqlite3")
    received = dict(con.execute("SELECT study_uid, MAX(received_at) FROM instances GROUP BY study_uid"))
    results = {uid: json.loads(js) for uid, js in con.execute(
        "SELECT study_uid, result_json FROM results WHERE superseded=0")}
    con.close()
    # the node's own stage timings: the worker's "study triaged" line (stage_ms, claimed_at,
    # committed_at) and the deliverer's "result delivered" line (send_started_at, send_ms)
    timers: dict[str, dict[str, Any]] = {}
    for rec in node.log_records("study triaged"):
        timers.setdefault(rec["study_uid"], {}).update(
            {f"{k}_ms": v for k, v in rec.get("stage_ms", {}).items()},
            claimed_at=rec["claimed_at"], committed_at=rec["committed_at"])
    for rec in node.log_records("result delivered"):
        t = timers.setdefault(rec["study_uid"], {})
        if "send_started_at" not in t:  # the first delivery of the study's result
            t.update(send_started_at=rec["send_started_at"], send_ms=rec["send_ms"])
    for uid, info in sent.items():
        s, t, r = stages[uid], timers.get(uid, {}), results.get(uid)
        if uid not in received or not r or "committed_at" not in t or "send_started_at" not in t:
            continue
        film = r["films"][0]["timings_ms"]
        s["receive"] = (received[uid] - info["t0"]) * 1000
        s["claim_wait"] = (t["claimed_at"] - received[uid]) * 1000
        s["read"] = t.get("read_ms", 0.0)
        for key in ("decode", "gate", "preprocess", "model"):
            s[key] = film.get(key, 0.0)
        s["sr_build"] = t.get("sr_ms", 0.0)
        s["summary_image"] = t.get("summary_image_ms", 0.0)
        s["save"] = t.get("save_ms", 0.0) + t.get("heatmaps_ms", 0.0)
        s["commit"] = t.get("commit_ms", 0.0)
        s["delivery_wait"] = (t["send_started_at"] - t["committed_at"]) * 1000
        s["send"] = t["send_ms"]
        s["total"] = (info["t_sr"] - info["t0"]) * 1000
        off_path = AFTER_SR if "summary_save_ms" in t else ()
        if off_path:  # the summary image made after the SR's commit: not on the SR's path
            s["summary_save"] = t["summary_save_ms"]
            s["summary_commit"] = t.get("summary_commit_ms", 0.0)
        s["unaccounted"] = s["total"] - sum(v for k, v in s.items() if k not in ("total", "send", *off_path)) \
            - (info["t_sr"] - t["send_started_at"]) * 1000
    return {uid: s for uid, s in stages.items() if s}


#: stages a node that sends the SR first runs after the SR's commit
AFTER_SR = ("summary_image", "summary_save", "summary_commit")


SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def object_figures(node: peers.Node, state: Path, sent: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Size and send time of the result objects of the measured studies: from the deliverer's
    "result delivered" lines (bytes, object_ms per object) and the stored summary images
    (transfer syntax, uncompressed RGB size)."""
    from pydicom import dcmread

    per_kind: dict[str, dict[str, list[float]]] = {"sr": {"bytes": [], "send_ms": []},
                                                   "summary_image": {"bytes": [], "send_ms": []}}
    syntaxes: set[str] = set()
    ratios: list[float] = []
    rgb: dict[str, float] = {}                      # SOP Instance UID -> uncompressed bytes
    for uid in sent:
        for path in sorted((state / "results" / uid).glob("*.dcm")):
            hdr = dcmread(path, stop_before_pixels=True)
            if str(hdr.SOPClassUID) == SECONDARY_CAPTURE:
                syntaxes.add(hdr.file_meta.TransferSyntaxUID.name)
                rgb[str(hdr.SOPInstanceUID)] = float(int(hdr.Rows) * int(hdr.Columns) * int(hdr.SamplesPerPixel))
    for rec in node.log_records("result delivered"):
        if rec.get("study_uid") not in sent or "object_ms" not in rec:
            continue
        kind = "sr" if str(rec.get("sop_class_uid", "")).startswith(SR_PREFIX) else "summary_image"
        per_kind[kind]["bytes"].append(float(rec.get("bytes", 0)))
        per_kind[kind]["send_ms"].append(float(rec["object_ms"]))
        if kind == "summary_image" and rec.get("sop_instance_uid") in rgb and rec.get("bytes"):
            ratios.append(rgb[rec["sop_instance_uid"]] / float(rec["bytes"]))
    out: dict[str, Any] = {}
    for kind, figures in per_kind.items():
        out[kind] = {"bytes": _stats(figures["bytes"]), "send_ms": _stats(figures["send_ms"]),
                     "objects": len(figures["bytes"])}
    out["summary_image"]["transfer_syntax"] = ", ".join(sorted(syntaxes)) or None
    out["summary_image"]["uncompressed_bytes"] = _stats(list(rgb.values()))
    out["summary_image"]["compression_ratio_mean"] = round(sum(ratios) / len(ratios), 2) if ratios else None
    return out


def wait_delivered(node: peers.Node, state: Path, sent: dict[str, dict[str, Any]], timeout_s: float = 30.0) -> None:
    """Until every result object of the measured studies is logged as delivered (the SR
    reaches the sink first; the summary image follows on the same association)."""
    def missing() -> int:
        owed = sum(len(list((state / "results" / uid).glob("*.dcm"))) for uid in sent)
        done = sum(1 for rec in node.log_records("result delivered") if rec.get("study_uid") in sent)
        return owed - done

    deadline = time.monotonic() + timeout_s
    while missing() > 0 and time.monotonic() < deadline:
        time.sleep(0.2)


def start_profiler(pid: int, out: Path) -> subprocess.Popen | None:
    """py-spy sampling the serving process (all threads, native frames off), or None."""
    import shutil

    exe = shutil.which("py-spy") or str(C.PY.parent / "py-spy")
    if not Path(exe).exists():
        C.note("latency: --profile needs py-spy (pip install py-spy); running without")
        return None
    return subprocess.Popen([exe, "record", "--format", "raw", "--rate", "100", "--nonblocking",
                             "--output", str(out), "--pid", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise_profile(raw: Path, top: int = 30) -> dict[str, Any]:
    """Share of CPU samples per function (inclusive) and per thread, from py-spy's raw output."""
    from collections import Counter

    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        names = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].split("/")[-1] + ")"
                 for f in frames if " (" in f]
        threads[next((x for x in names if "run" in x and "Thread" not in x), names[0] if names else "?")] += n
        for name in set(names):
            inclusive[name] += n
    return {"samples": total,
            "by_thread_entry": {k: round(v / total, 3) for k, v in threads.most_common(8)},
            "inclusive_share": {k: round(v / total, 3) for k, v in inclusive.most_common(top)}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="single-film studies")
    ap.add_argument("--distinct", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2, help="studies sent first and not counted")
    ap.add_argument("--profile", action="store_true",
                    help="sample the serving process with py-spy and add the top functions "
                         "(the profiler costs CPU: latencies of a profiled run are not headline figures)")
    ap.add_argument("--node-cli", type=Path, default=peers.CLI,
                    help="the cxr-triage executable to serve (default: this tree's); e.g. an old "
                         "commit's worktree venv, to measure it under the same harness")
    args = ap.parse_args()
    model, model_kind = C.model_under_test()
    work = C.tempdir("cxrt-bench-latency-")
    sink = node = prof = None
    try:
        syntaxes = [str(ExplicitVRLittleEndian), str(JPEGLosslessSV1)]
        bases = C.base_films(work, syntaxes, args.distinct)
        total = args.n + args.warmup
        files = {ts: C.clone_instances(bases[ts], work / ts, (total + 1) // 2) for ts in syntaxes}
        order = [files[syntaxes[i % 2]][i // 2] for i in range(total)]
        sink = SRSink(procs.free_port())
        port, state = procs.free_port(), work / "state"
        cfg = peers.write_node_config(work / "node.toml", port, model, state,
                                  node={"quiet_period_s": 0.0},
                                  delivery={"destinations": [sink.destination], "summary_image": True})
        node = peers.Node(cfg, port, work / "node.log", cli=args.node_cli).start()
        if args.profile:
            assert node.proc is not None
            prof = start_profiler(node.proc.pid, work / "profile.raw")
        C.note(f"latency: {total} studies one by one")
        sent: dict[str, dict[str, Any]] = {}
        failures = 0
        for i, path in enumerate(order):
            from pydicom import dcmread

            hdr = dcmread(path, stop_before_pixels=True)
            uid, ts = str(hdr.StudyInstanceUID), str(hdr.file_meta.TransferSyntaxUID)
            cmd = peers.storescu_cmd([path], port, peers.STORESCU_TS[ts])
            t0 = time.time()
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            t_sent = time.time()
            t_sr = sink.wait(uid, 60.0) if proc.returncode == 0 else None
            if t_sr is None:
                failures += 1
                C.note(f"  study {i}: no SR (storescu rc {proc.returncode}) {proc.stderr[-300:]}")
                continue
            if i >= args.warmup:
                sent[uid] = {"t0": t0, "t_sent": t_sent, "t_sr": t_sr, "syntax": ts}
            if not sink.wait_objects(uid, 2, 10.0):   # the SR and the summary image
                C.note(f"  study {i}: summary image not received within 10 s")
        wait_delivered(node, state, sent)
        rss = node.rss_kb()
        if prof is not None:
            prof.send_signal(2)  # py-spy writes its output on SIGINT
            prof.wait(60)
        node.stop(graceful=False)
        per_study = breakdown(node, state, sent)
        objects = object_figures(node, state, sent)
        totals = [(v["t_sr"] - v["t0"]) * 1000 for v in sent.values()]
        by_ts = {name: _stats([(v["t_sr"] - v["t0"]) * 1000 for v in sent.values() if v["syntax"] == ts])
                 for name, ts in zip(("explicit_vr_little_endian", "jpeg_lossless_sv1"), syntaxes)}
        keys = ["receive", "claim_wait", "read", "decode", "gate", "preprocess", "model", "sr_build",
                "summary_image", "save", "commit", "delivery_wait", "send", "unaccounted",
                "summary_save", "summary_commit"]
        stage_stats = {k: _stats([s[k] for s in per_study.values() if k in s]) for k in keys}
        sr_first = bool(stage_stats["summary_save"])
        mean_total = sum(totals) / len(totals) if totals else None
        model_mean = stage_stats["model"].get("mean")
        out = {
            "benchmark": "latency",
            "studies": len(sent), "failures": failures, "warmup": args.warmup,
            "film": f"{C.FILM_ROWS}x{C.FILM_COLS} 16-bit DX, alternately uncompressed and JPEG Lossless SV1",
            "path": "dcmtk storescu -> cxr-triage serve (quiet_period_s 0, summary_image on, ORT threads 2) -> pynetdicom SCP",
            "clock": "from just before storescu starts to the SR fully received at the destination",
            "model": model_kind,
            "latency_ms": _stats(totals), "latency_ms_by_syntax": by_ts,
            "node_cli": str(args.node_cli),
            "breakdown_ms": {k: v for k, v in stage_stats.items() if not (sr_first and k in AFTER_SR)},
            "after_sr_ms": {k: stage_stats[k] for k in AFTER_SR} if sr_first else None,
            "result_objects": objects,
            "model_share_of_mean_total": C.ratio(model_mean, mean_total),
            "pipeline_share_of_mean_total": C.ratio(sum(stage_stats[k].get("mean", 0.0) for k in (
                "read", "decode", "gate", "preprocess", "sr_build", "summary_image", "save", "commit")
                if not (sr_first and k in AFTER_SR)), mean_total),
            "polling_share_of_mean_total": C.ratio(sum(stage_stats[k].get("mean", 0.0) for k in (
                "claim_wait", "delivery_wait")), mean_total),
            "serving_process_rss_mb": round(rss.get("VmRSS", 0) / 1024, 1),
            "serving_process_peak_rss_mb": round(rss.get("VmHWM", 0) / 1024, 1),
            "targets": {"p95_ms_below": 1500, "model_share_at_least": 0.5},
        }
        p95 = out["latency_ms"].get("p95")
        out["target_p95_met"] = p95 is not None and p95 < 1500 and failures == 0
        out["target_model_share_met"] = (out["model_share_of_mean_total"] or 0) >= 0.5
        if prof is not None and (work / "profile.raw").exists():
            out["profile"] = {"tool": "py-spy record --rate 100 --nonblocking (serving process, all threads)",
                              **summarise_profile(work / "profile.raw")}
        out["machine"] = C.machine()
        C.emit(out)
    finally:
        if prof is not None and prof.poll() is None:
            prof.kill()
        if node:
            node.stop(graceful=False)
        if sink:
            sink.stop()
        C.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
