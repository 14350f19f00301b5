"""``cxr-triage serve`` and ``cxr-triage status``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cxr_triage.config import Config, ConfigError, resolve_path
from cxr_triage.contract.sop_classes import is_sr_class
from cxr_triage.dicom_node.store.db import StoreOptions
from cxr_triage.dicom_node.store.jobs import JobStore
from cxr_triage.dicom_node.store.queries import StudyQueries
from cxr_triage.dicom_node.store.spool import StateDirs


def register(subparsers: Any, name: str, help_text: str) -> None:
    if name == "serve":
        p = subparsers.add_parser(name, help=help_text, description=(
            "Run the DICOM node: receive (C-STORE), triage each study after its quiet period, "
            "return the result SR to the configured destinations (or <state_dir>/outbox). "
            "SIGTERM stops accepting, finishes in-flight work and exits; a restart resumes."))
        p.add_argument("--port", type=int, help="override [node] port (0: any free port, logged at start)")
        p.add_argument("--state-dir", help="override [node] state_dir")
        p.add_argument("--model", metavar="FILE",
                       help="ONNX model to serve (overrides [inference] model_path; default: the bundled model)")
        p.add_argument("--site-threshold", metavar="FILE",
                       help="`cxr-triage commission` file of that model (overrides [inference] "
                            "site_threshold_file); the node refuses to start if it was made for another model")
        p.set_defaults(func=run_serve)
    elif name == "status":
        p = subparsers.add_parser(name, help=help_text, description=(
            "Queue counts, the oldest pending item and delivery failures, read from the node's "
            "job store (works while the node runs)."))
        p.add_argument("--state-dir", help="override [node] state_dir")
        p.add_argument("--json", action="store_true", help="one JSON object")
        p.add_argument("--studies", type=int, default=10, metavar="N",
                       help="also list the N most recent studies (default 10, 0 for none)")
        p.add_argument("--retry-dead", action="store_true",
                       help="put dead-lettered and refused deliveries back in the queue")
        p.set_defaults(func=run_status)
    else:  # pragma: no cover
        raise ValueError(name)


def _override(cfg: Config, args: argparse.Namespace) -> Config:
    node: dict[str, Any] = {}
    if getattr(args, "port", None) is not None:
        node["port"] = args.port
    if getattr(args, "state_dir", None):
        node["state_dir"] = args.state_dir
    return cfg.replace(node=node) if node else cfg


def _override_inference(cfg: Config, args: argparse.Namespace) -> Config:
    """``--model`` / ``--site-threshold`` as [inference] keys (absolute paths: a config file's
    relative paths are resolved against its folder, a command line's against the working one)."""
    inference: dict[str, Any] = {}
    if getattr(args, "model", None):
        inference["model_path"] = str(Path(args.model).resolve())
    if getattr(args, "site_threshold", None):
        inference["site_threshold_file"] = str(Path(args.site_threshold).resolve())
    return cfg.replace(inference=inference) if inference else cfg


def run_serve(args: argparse.Namespace, cfg: Config) -> int:
    """``cxr-triage serve``: 2 with one line on stderr when the node refuses to start (a missing
    model or site threshold file, one made for another model, an unsupported pynetdicom)."""
    # pynetdicom, ONNX Runtime and the worker load only for `serve` (`status` stays light)
    from cxr_triage.dicom_node.compat import require_supported_pynetdicom
    from cxr_triage.dicom_node.service.node import serve
    from cxr_triage.inference.site_threshold import SiteThresholdError

    cfg = _override_inference(_override(cfg, args), args)
    for what, value in (("model", cfg.inference.model_path), ("site threshold file", cfg.inference.site_threshold_file)):
        if value and not resolve_path(cfg, value).is_file():
            print(f"cxr-triage serve: {what} not found: {resolve_path(cfg, value)}", file=sys.stderr)
            return 2
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        require_supported_pynetdicom()
        return serve(cfg, stop)
    except (SiteThresholdError, ConfigError) as exc:  # never serve with them
        print(f"cxr-triage serve: refusing to start: {exc}", file=sys.stderr)
        return 2


def status_report(cfg: Config, studies: int = 10) -> dict[str, Any]:
    """What ``status`` prints, as data (also handy for the demo and tests)."""
    dirs = StateDirs(resolve_path(cfg, cfg.node.state_dir))
    if cfg.store.backend == "sqlite" and not dirs.queue_db.exists():
        return {"state_dir": str(dirs.root), "error": "no job store yet (the node has not run here)"}
    store = JobStore(dirs.queue_db, options=StoreOptions.from_settings(cfg.store))
    queries = StudyQueries(store)
    try:
        return {
            "state_dir": str(dirs.root),
            "counts": queries.counts(),
            "oldest_pending": queries.oldest_pending(),
            "delivery_failures": queries.delivery_failures(),
            "quarantined": len(list(dirs.quarantine.glob("*.json"))),
            "nodes": queries.nodes(),
            "studies": queries.list_studies(limit=studies) if studies else [],
        }
    finally:
        store.close()


def _ts(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _stale(heartbeat: float | None, lease_s: float) -> str:
    """`` STALE: ...`` for a node whose heartbeat is older than a lease (stopped or cut off:
    what it held is taken over once its leases run out), else ""."""
    age = None if heartbeat is None else time.time() - float(heartbeat)
    if age is None or age <= lease_s:
        return ""
    return f"  STALE: no heartbeat for {age:.0f} s (lease {lease_s:.0f} s): stopped or cut off"


def quiet_logs() -> None:
    """A report for a person on stdout: the node's own INFO lines (e.g. "job store on
    postgresql") are left out; warnings and errors still reach stderr."""
    root = logging.getLogger()
    root.setLevel(max(logging.WARNING, root.level))


def run_status(args: argparse.Namespace, cfg: Config) -> int:
    quiet_logs()
    cfg = _override(cfg, args)
    if args.retry_dead:
        n = JobStore(StateDirs(resolve_path(cfg, cfg.node.state_dir)).queue_db,
                     options=StoreOptions.from_settings(cfg.store)).retry_dead()
        print(f"{n} dead or refused deliveries re-queued")
    rep = status_report(cfg, args.studies)
    if args.json:
        print(json.dumps(rep, indent=2, default=str))
        return 0 if "error" not in rep else 1
    out = sys.stdout.write
    out(f"state dir: {rep['state_dir']}\n")
    if "error" in rep:
        out(f"{rep['error']}\n")
        return 1
    c = rep["counts"]
    out(f"instances received: {c['instances']}   quarantined: {rep['quarantined']}\n")
    out("studies:    " + (", ".join(f"{k} {v}" for k, v in sorted(c["studies"].items())) or "none") + "\n")
    out("decisions:  " + (", ".join(f"{k} {v}" for k, v in sorted(c["decisions"].items())) or "none") + "\n")
    out("deliveries: " + (", ".join(f"{k} {v}" for k, v in sorted(c["deliveries"].items())) or "none") + "\n")
    old = rep["oldest_pending"]
    if old:
        out(f"oldest pending: {old['kind']} {old['study_uid']} ({old['state']}) "
            f"for {old['age_s']:.0f} s" + (f", {old.get('attempts')} attempt(s), last error: "
                                           f"{old.get('last_error')}" if old["kind"] == "delivery" else "") + "\n")
    else:
        out("oldest pending: none\n")
    for n in rep["nodes"]:
        out(f"node {n['node_name']} ({n['host']}, pid {n['pid']}): heartbeat {_ts(n['last_heartbeat'])},"
            f" holds {n['studies_held']} studies, {n['deliveries_held']} deliveries"
            f"{_stale(n['last_heartbeat'], cfg.store.lease_s)}\n")
    fails = rep["delivery_failures"]
    out(f"delivery failures: {len(fails)}\n")
    for f in fails:
        what = "" if not f.get("sop_class_uid") else (
            " (SR)" if is_sr_class(f["sop_class_uid"]) else " (summary image)")
        out(f"  [{f['state']}] {f['destination']}{what} study {f['study_uid']} attempts {f['attempts']}"
            f" next {_ts(f['next_attempt_at'])}: {f['last_error']}\n")
    if rep["studies"]:
        out("recent studies:\n")
        for s in rep["studies"]:
            out(_study_line(s) + "\n")
    return 0


def _study_line(s: dict[str, Any]) -> str:
    """One study of ``status``: when, state, decision, score, films, delivery, the accession
    number a person looks up (or "-"), the Study Instance UID, and why it is not assessable."""
    score = f"{s['score']:.3f}" if s["score"] is not None else "-"
    why = ", ".join(str(r).replace("_", " ") for r in s.get("reasons") or [])
    return (f"  {_ts(s['first_received_at'])}  {s['state']:<10} {str(s['decision'] or '-'):<15}"
            f" {score:>6}  {s['n_instances']:>3} inst  delivery {s['delivery_status'] or '-':<9}"
            f" acc {s.get('accession_number') or '-':<16} {s['study_uid']}"
            + (f"  ({why})" if why else "") + ("  nodule/mass flagged" if s.get("nodule_flag") else ""))
