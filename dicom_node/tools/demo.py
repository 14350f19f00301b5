"""``make demo``: send DICOM films to a running node (``make run``) and print each study's decision.

Sends with a pynetdicom SCU over one association (each file in its own transfer syntax), then
follows the node's job store (the same one ``cxr-triage status`` reads) until every study is
triaged and its result delivered (to the outbox by default), and prints a table.

    python -m cxr_triage.dicom_node.tools.demo ../shared/data/dicom [--host H --port P]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import AE

from cxr_triage.config import ConfigError, load_config, resolve_path
from cxr_triage.dicom_node.delivery.scu import associate


def _files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(q for q in p.rglob("*.dcm")) if p.is_dir() else [p])
    return out


def demo_films(files: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The films a demo sends, and those it leaves out with the reason.

    A file whose SOP Instance UID another file already has is a test variant of that film (the
    shared samples' MONOCHROME1 variant is one), not a new image: sending it would replace the
    first film as a changed instance (DICOM PS3.4 B.4.1: one SOP Instance UID, one image), so a
    newcomer's worklist would show the variant and fewer studies than files.
    """
    chosen: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    seen: dict[str, Path] = {}
    for f in files:
        uid = str(dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).get("SOPInstanceUID", ""))
        if uid and uid in seen:
            skipped.append((f, f"same SOP Instance UID as {seen[uid].name}: a test variant, not a demo film"))
            continue
        seen[uid] = f
        chosen.append(f)
    return chosen, skipped


def send(files: list[Path], host: str, port: int, called: str, calling: str) -> dict[str, str]:
    """C-STORE every file; returns {study uid: status text of its last instance}."""
    datasets = [dcmread(f) for f in files]
    ae = AE(ae_title=calling)
    for pair in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}):
        ae.add_requested_context(pair[0], pair[1])
    assoc = associate(ae, host, port, ae_title=called)
    if not assoc.is_established:
        raise SystemExit(f"demo: no association with {called}@{host}:{port} (is `make run` running?)")
    out: dict[str, str] = {}
    try:
        for f, ds in zip(files, datasets):
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            text = "no response" if code is None else f"0x{code:04X}"
            print(f"sent {f.name:<48} {text}")
            out[str(ds.StudyInstanceUID)] = text
    finally:
        assoc.release()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="DICOM files or folders")
    ap.add_argument("--config", help="the node's TOML config (default: $CXR_TRIAGE_CONFIG or embedded)")
    ap.add_argument("--host", default=None, help="node host (default: [node] host, 0.0.0.0 -> 127.0.0.1)")
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--aet", default="CXRDEMO", help="calling AE title")
    ap.add_argument("--timeout", type=float, default=None, help="seconds to wait for results")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    host = args.host or (cfg.node.host if cfg.node.host not in ("0.0.0.0", "::", "") else "127.0.0.1")
    port = args.port or cfg.node.port
    files, skipped = demo_films(_files(args.paths))
    for f, why in skipped:
        print(f"left out {f.name}: {why}")
    if not files:
        print("demo: no DICOM files found", file=sys.stderr)
        return 2
    sent = send(files, host, port, cfg.node.ae_title, args.aet)
    stored = {uid for uid, st in sent.items() if st == "0x0000"}
    timeout = args.timeout or cfg.node.quiet_period_s + 120.0

    from cxr_triage.dicom_node.store.jobs import JobStore
    from cxr_triage.dicom_node.store.queries import StudyQueries
    from cxr_triage.dicom_node.store.spool import StateDirs

    dirs = StateDirs(resolve_path(cfg, cfg.node.state_dir))
    if not dirs.queue_db.exists():
        print(f"demo: sent; no job store at {dirs.queue_db} to follow (node on another host or state dir?)")
        return 0
    store = StudyQueries(JobStore(dirs.queue_db))
    print(f"waiting for {len(stored)} studies (quiet period {cfg.node.quiet_period_s:.0f} s) ...")
    deadline = time.monotonic() + timeout
    rows: dict[str, dict[str, Any] | None] = {}
    while time.monotonic() < deadline:
        rows = {uid: store.get_study(uid) for uid in stored}
        if all(r and r["state"] in ("triaged", "failed") and r["delivery_status"] in ("delivered", "none", "dead", "refused")
               for r in rows.values()):
            break
        time.sleep(0.5)
    print()
    print(f"{'study':<24} {'decision':<15} {'score':>6} {'films':>5}  {'delivery':<9} detail")
    for uid, r in rows.items():
        if r is None:
            print(f"{'...' + uid[-21:]:<24} (not in the job store)")
            continue
        films = (r.get("result") or {}).get("films", [])
        reasons = sorted({f["reason"] for f in films if f.get("reason")})
        score = f"{r['score']:.3f}" if r["score"] is not None else "-"
        where = ", ".join(sorted({d["destination"] for d in r["deliveries"]})) or "-"
        print(f"{'...' + uid[-21:]:<24} {str(r['decision'] or r['state']):<15} {score:>6} {len(films):>5}"
              f"  {str(r['delivery_status'] or '-'):<9} {('not assessable: ' + ', '.join(reasons)) if reasons else 'to ' + where}")
    pending = [u for u, r in rows.items() if not r or r["state"] != "triaged"]
    if pending:
        print(f"\n{len(pending)} studies not finished within {timeout:.0f} s (see `cxr-triage status`)")
        return 1
    print(f"\nresults: {dirs.outbox} (outbox) or the configured destinations; `cxr-triage status` for the queue")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
