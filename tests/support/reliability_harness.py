"""Helpers for the reliability suite (tests/test_reliability_*.py).

The suite treats the node as a black box wherever it can: ``cxr-triage serve`` runs as a
subprocess (so ``kill -9`` is a real crash), a pynetdicom SCU plays the sending PACS and
remembers the DIMSE status of every instance, and a pynetdicom SCP plays the destination and
remembers every object it was given (duplicates included). Afterwards the node's SQLite job
store is read only to name its *current* result per study.

Every film carries the distinctive PHI below, so any log line that leaks it is found
(:func:`phi_hits`). Figures for the closing note go to ``test-artifacts/reliability-summary.json``
through :data:`SUMMARY`.
"""

from __future__ import annotations

import copy
import json
import os
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification

from cxr_triage.dicom_node.delivery.scu import associate
from cxr_triage.paths import repo_root

# the suite's process and port helpers are node_peers' (re-exported for the test modules)
from support.node_peers import NODE_AET, NodeProcess, free_port, wait_for, write_node_config  # noqa: F401

PROBE_AET = "RELPROBE"          # the harness's own C-ECHO probe (allowed in every config)
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."

# Distinctive PHI written into every film the suite sends; none of it may reach a log.
PHI_NAME = "Quokkafield^Wilhelmina"
PHI_ID = "PHIQ-90210-ZX"
PHI_BIRTH = "17.08.1923"         # a birth date as people write it (not a valid DA)
PHI_MARKERS = ("Quokkafield", "Wilhelmina", PHI_ID, "PHIQ-90210", PHI_BIRTH)

# Every log-like file the suite produced (node stdout/stderr, audit logs, SCP logs).
LOG_FILES: list[Path] = []


# ---------------------------------------------------------------------------- summary

class Summary:
    """Scenario figures, rewritten to test-artifacts/reliability-summary.json on every update
    (so a partial run still leaves its figures), with suite totals."""

    TOTALS = ("instances_sent", "acknowledged", "delivered", "ignored_by_design", "lost", "duplicates",
              "malformed_inputs_tried", "crashes_survived")

    def __init__(self, path: Path):
        self.path = path
        self.scenarios: dict[str, dict[str, Any]] = {}

    def record(self, scenario: str, **figures: Any) -> None:
        self.scenarios.setdefault(scenario, {}).update(figures)
        self.write()

    def totals(self) -> dict[str, int]:
        out = {k: 0 for k in self.TOTALS}
        for figs in self.scenarios.values():
            for k in self.TOTALS:
                v = figs.get(k)
                if isinstance(v, (int, float)):
                    out[k] += int(v)
        return out

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "totals": self.totals(), "scenarios": self.scenarios}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))
        os.replace(tmp, self.path)


SUMMARY = Summary(repo_root() / "test-artifacts" / "reliability-summary.json")


# ---------------------------------------------------------------------------- PHI

def phi_hits(paths: Iterable[Path]) -> list[str]:
    """``file:line`` for every line holding one of the PHI markers."""
    hits = []
    for path in paths:
        files = [p for p in Path(path).rglob("*") if p.is_file()] if Path(path).is_dir() else [Path(path)]
        for f in files:
            try:
                text = f.read_text(errors="replace")
            except OSError:
                continue
            for n, line in enumerate(text.splitlines(), 1):
                if any(m in line for m in PHI_MARKERS):
                    hits.append(f"{f}:{n}: {line[:300]}")
    return hits


# ---------------------------------------------------------------------------- films

def film_pngs(shared_data: Path, n: int) -> list[Path]:
    pngs = sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))
    if len(pngs) < n:
        raise RuntimeError(f"need {n} NIH films under {shared_data}, found {len(pngs)}")
    return pngs[:n]


# (film_to_dicom SOP class name, transfer syntax, bits) cycled over the base films
_VARIANTS = [("CR", "1.2.840.10008.1.2.4.80", 8),        # JPEG-LS lossless
             ("DX_PRES", "1.2.840.10008.1.2.1", 12),     # explicit VR little endian
             ("DX_PROC", "1.2.840.10008.1.2.5", 12)]     # RLE lossless


def base_films(pngs: list[Path]) -> list[Dataset]:
    """Real films wrapped as CR/DX DICOM (film_to_dicom), carrying the suite's PHI."""
    from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom

    out = []
    for i, png in enumerate(pngs):
        sop, ts, bits = _VARIANTS[i % len(_VARIANTS)]
        out.append(png_to_dicom(png, sop_class=sop, transfer_syntax_uid=ts, bits_stored=bits,
                                patient_name=PHI_NAME, patient_id=PHI_ID,
                                accession_number="ACC7731"))
    return out


def new_instance(base: Dataset, study_uid: str, series_uid: str, number: int) -> Dataset:
    """A copy of ``base`` as a new instance of the given study/series."""
    ds = copy.deepcopy(base)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    return ds


def make_studies(bases: list[Dataset], n_studies: int, per_study: int, offset: int = 0) -> list[list[Dataset]]:
    studies = []
    k = offset
    for _ in range(n_studies):
        st, se = generate_uid(), generate_uid()
        study = []
        for j in range(per_study):
            study.append(new_instance(bases[k % len(bases)], st, se, j + 1))
            k += 1
        studies.append(study)
    return studies


def contexts_for(datasets: Iterable[Dataset]) -> list[tuple[str, str]]:
    return sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})


# ---------------------------------------------------------------------------- node

def write_config(path: Path, port: int, model: Path, **sections: dict[str, Any]) -> Path:
    """Loopback node config for the suite (node_peers' defaults); an AE allow-list also
    admits the harness's own C-ECHO probe."""
    node = dict(sections.get("node", {}))
    if node.get("allowed_calling_aets"):
        node["allowed_calling_aets"] = [*node["allowed_calling_aets"], PROBE_AET]
        sections = {**sections, "node": node}
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_node_config(path, port, model, **sections)


def echo(port: int, aet: str = PROBE_AET, timeout: float = 5.0, tls_args: Any = None) -> bool:
    ae = AE(ae_title=aet)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    assoc = associate(ae, "127.0.0.1", port, ae_title=NODE_AET, tls_args=tls_args)
    if not assoc.is_established:
        return False
    try:
        st = assoc.send_c_echo()
        return getattr(st, "Status", None) == 0
    finally:
        assoc.release()


class NodeProc(NodeProcess):
    """The node under test: ready when it answers C-ECHO, counts its crashes, and reads its
    job store; stdout+stderr appended to node.log."""

    START_TIMEOUT_S = 120.0
    STOP_TIMEOUT_S = 60.0

    def __init__(self, config: Path, port: int, probe: Callable[[], bool] | None = None):
        super().__init__(config, port)
        self.state_dir = config.parent / "state"
        self.probe = probe or (lambda: echo(port))
        self.kills = 0
        for p in (self.log, self.state_dir / "audit.jsonl"):
            if p not in LOG_FILES:
                LOG_FILES.append(p)

    def _environ(self) -> dict[str, str]:
        return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="default", **self.env)

    def ready(self) -> bool:
        try:
            return bool(self.probe())
        except Exception:  # noqa: BLE001 - not listening yet
            return False

    def kill(self) -> None:
        """``kill -9``: a crash."""
        if self._sigkill():
            self.kills += 1

    def db(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        """Rows from the node's job store (read while it runs: WAL readers never block)."""
        con = sqlite3.connect(self.state_dir / "queue.sqlite3", timeout=30)
        try:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute(sql, args)]
        finally:
            con.close()

    def delivered_instances(self) -> set[str]:
        """Instances named in their study's current result, where every delivery of that
        result succeeded (for scenarios that deliver to the outbox)."""
        out: set[str] = set()
        rows = self.db(
            "SELECT r.result_json, (SELECT COUNT(*) FROM deliveries d WHERE d.result_id=r.id) AS n,"
            " (SELECT COUNT(*) FROM deliveries d WHERE d.result_id=r.id AND d.state='delivered') AS ok"
            " FROM studies s JOIN results r ON r.id=s.result_id")
        for r in rows:
            if r["n"] and r["n"] == r["ok"]:
                out.update(f["sop_instance_uid"] for f in json.loads(r["result_json"])["films"])
        return out

    def audit(self) -> list[dict[str, Any]]:
        from cxr_triage.dicom_node.store.audit import read_audit

        return read_audit(self.state_dir / "audit.jsonl")

    def current_results(self) -> dict[str, dict[str, Any]]:
        """Per study: state, current result id, its SR SOP Instance UID."""
        rows = self.db(
            "SELECT s.study_uid, s.state, s.result_id, o.sop_instance_uid AS sr_uid FROM studies s"
            " LEFT JOIN result_objects o ON o.result_id=s.result_id AND o.sop_class_uid LIKE ?",
            (SR_PREFIX + "%",))
        return {r["study_uid"]: r for r in rows}

    def result_srs(self) -> dict[str, tuple[str, int, int]]:
        """Every SR the node ever made: sop uid -> (study uid, result id, superseded)."""
        rows = self.db(
            "SELECT o.sop_instance_uid, r.study_uid, r.id, r.superseded FROM result_objects o"
            " JOIN results r ON r.id=o.result_id WHERE o.sop_class_uid LIKE ?", (SR_PREFIX + "%",))
        return {r["sop_instance_uid"]: (r["study_uid"], r["id"], r["superseded"]) for r in rows}


# ---------------------------------------------------------------------------- destination

@dataclass
class Receipt:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    evidence: frozenset[str]
    at: float


class RecordingSCP:
    """The destination PACS: a pynetdicom SCP that keeps a record of every C-STORE.

    ``hold`` (optional) is called with each receipt after it was recorded and may block,
    e.g. to let the test kill the node while its C-STORE waits for the response.
    """

    def __init__(self, port: int, aet: str = "RESULTS"):
        self.port = port
        self.aet = aet
        self.receipts: list[Receipt] = []
        self.hold: Callable[[Receipt], None] | None = None
        self._lock = threading.Lock()
        self._ae: AE | None = None
        self._server: Any = None

    @property
    def destination(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.port}"

    def start(self) -> "RecordingSCP":
        ae = AE(ae_title=self.aet)
        ae.add_supported_context(Verification)
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.maximum_associations = 20
        self._ae = ae
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._ae is not None:
            for assoc in list(self._ae.active_associations):
                assoc.abort()
            self._ae.shutdown()
            self._ae = None

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        evidence = set()
        for st in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
            for se in st.get("ReferencedSeriesSequence", []):
                for ref in se.get("ReferencedSOPSequence", []):
                    evidence.add(str(ref.ReferencedSOPInstanceUID))
        rec = Receipt(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.get("StudyInstanceUID", "")),
                      frozenset(evidence), time.time())
        with self._lock:
            self.receipts.append(rec)
        if self.hold is not None:
            self.hold(rec)
        return 0x0000

    def srs(self) -> list[Receipt]:
        with self._lock:
            return [r for r in self.receipts if r.sop_class_uid.startswith(SR_PREFIX)]

    def sr_uids_by_study(self) -> dict[str, Counter]:
        out: dict[str, Counter] = defaultdict(Counter)
        for r in self.srs():
            out[r.study_uid][r.sop_instance_uid] += 1
        return out

    def covered(self) -> set[str]:
        """Every instance referenced by some SR received."""
        return set().union(*(r.evidence for r in self.srs())) if self.srs() else set()

    def duplicates(self) -> int:
        counts = Counter(r.sop_instance_uid for r in self.srs())
        return sum(c - 1 for c in counts.values())

    def __enter__(self) -> "RecordingSCP":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ---------------------------------------------------------------------------- sender

RETRYABLE = {None, 0xA700, 0xA701, 0xA702}   # no response, out of resources: a PACS retries


@dataclass
class Sender:
    """The sending PACS: one association per study, retrying what got no final status.

    ``status`` keeps the last DIMSE status per SOP Instance UID (None: no response).
    ``in_assoc``/``acked_in_assoc`` let a test kill the node in the middle of an association.
    """

    port: int
    contexts: list[tuple[str, str]]
    calling_ae: str = "RELSCU"
    retry_delay_s: float = 0.3
    status: dict[str, int | None] = field(default_factory=dict)
    study_of: dict[str, str] = field(default_factory=dict)
    sent: int = 0                     # C-STORE requests made (retries included)
    acked_total: int = 0
    in_assoc: bool = False
    acked_in_assoc: int = 0
    interrupted: list[int] = field(default_factory=list)   # acked_in_assoc of each lost association
    errors: list[str] = field(default_factory=list)

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_ae)
        for sop, ts in self.contexts:
            ae.add_requested_context(sop, ts)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.connection_timeout = 2
        return ae

    def acked(self) -> dict[str, str]:
        """SOP Instance UID -> Study UID of every instance answered Success."""
        return {u: self.study_of[u] for u, s in self.status.items() if s == 0x0000}

    def send_study(self, study: list[Dataset], deadline: float) -> None:
        for ds in study:
            self.study_of[str(ds.SOPInstanceUID)] = str(ds.StudyInstanceUID)
        ae = self._ae()
        while True:
            todo = [ds for ds in study if self.status.get(str(ds.SOPInstanceUID), None) in RETRYABLE]
            if not todo:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(todo)} instance(s) still unacknowledged")
            assoc = associate(ae, "127.0.0.1", self.port, ae_title=NODE_AET)
            if not assoc.is_established:
                time.sleep(self.retry_delay_s)
                continue
            self.in_assoc, self.acked_in_assoc = True, 0
            lost = False
            try:
                for ds in todo:
                    uid = str(ds.SOPInstanceUID)
                    self.sent += 1
                    try:
                        st = assoc.send_c_store(ds)
                        code = getattr(st, "Status", None) if st else None
                    except Exception as exc:  # noqa: BLE001 - the association died under us
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                        code = None
                    self.status[uid] = code
                    if code == 0x0000:
                        self.acked_total += 1
                        self.acked_in_assoc += 1
                    if code is None or not assoc.is_established:
                        lost = True
                        break
                    if code in RETRYABLE:
                        break
            finally:
                self.in_assoc = False
                if lost:
                    self.interrupted.append(self.acked_in_assoc)
                if assoc.is_established:
                    assoc.release()
            if any(self.status.get(str(ds.SOPInstanceUID)) in RETRYABLE for ds in study):
                time.sleep(self.retry_delay_s)

    def send_all(self, studies: list[list[Dataset]], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for study in studies:
            self.send_study(study, deadline)


def run_in_thread(fn: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            errors.append(exc)

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th, errors


# ---------------------------------------------------------------------------- accounting

@dataclass
class Accounting:
    acknowledged: int
    delivered: int                 # acknowledged instances referenced by their study's current SR
    lost: list[str]                # acknowledged instances in no delivered current SR
    duplicates: int                # same SR SOP Instance UID received more than once
    superseded_delivered: int      # older results of a study delivered before a newer one
    problems: list[str]


def account(acked: dict[str, str], node: NodeProc, dest: RecordingSCP) -> Accounting:
    """Check every acknowledged instance against the node's current results and the
    destination: one current SR per study, at the destination, referencing all of them."""
    current = node.current_results()
    made = node.result_srs()
    by_study: dict[str, set[str]] = defaultdict(set)
    for sop, study in acked.items():
        by_study[study].add(sop)
    at_dest = dest.sr_uids_by_study()
    receipts = {r.sop_instance_uid: r for r in dest.srs()}
    lost, problems, superseded = [], [], 0
    delivered = 0
    for study, sops in by_study.items():
        cur = current.get(study)
        if cur is None or cur["sr_uid"] is None:
            problems.append(f"study {study}: no current result (state {cur and cur['state']})")
            lost.extend(sops)
            continue
        sr_uid = cur["sr_uid"]
        if sr_uid not in at_dest.get(study, {}):
            problems.append(f"study {study}: current SR {sr_uid} not at the destination")
            lost.extend(sops)
            continue
        missing = sops - receipts[sr_uid].evidence
        lost.extend(missing)
        delivered += len(sops) - len(missing)
        for other in at_dest[study]:
            if other == sr_uid:
                continue
            origin = made.get(other)
            if origin is None or origin[0] != study or not origin[2]:
                problems.append(f"study {study}: unexplained second SR {other} at the destination")
            else:
                superseded += 1
    stray = set(at_dest) - set(by_study) - set(current)
    if stray:
        problems.append(f"results for studies never sent: {sorted(stray)}")
    return Accounting(len(acked), delivered, sorted(lost), dest.duplicates(), superseded, problems)
