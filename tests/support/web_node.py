"""A node state dir filled with real triage results of sample films, for the web tests.

Real films from ../shared/data are wrapped into DICOM (``film_to_dicom``), spooled and
recorded in the node's JobStore as the SCP records them, triaged by the node's own worker
(``TriageWorker.run_once``: reader, gate, ONNX Runtime with the tiny model, SR), and delivered
by the node's own ``Deliverer`` to the outbox — one study also to a PACS that is down, so
its delivery history holds real failed attempts. Receipt times are given to the store, so a
test can have a study that has waited for hours.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

from cxr_triage.config import Config, load_config
from cxr_triage.dicom_node.store.jobs import OUTBOX, InstanceRecord, JobStore
from cxr_triage.dicom_node.store.queries import StudyQueries
from cxr_triage.dicom_node.store.spool import Quarantine, Spool, StateDirs

CANINE = "highdicom_dx_canine_thorax_mono1"


@dataclass
class TriagedNode:
    cfg: Config
    dirs: StateDirs
    store: JobStore
    decisions: dict[str, str] = field(default_factory=dict)   # study uid -> stored decision
    received: dict[str, float] = field(default_factory=dict)  # study uid -> first receipt
    instances: int = 0
    model_name: str = ""
    model_version: str = ""
    old_normal: str = ""          # the likely-normal study that waited past the maximum
    failing_study: str = ""       # the study whose second destination is down

    @property
    def queries(self) -> StudyQueries:
        """The read side of the node's job store (what the worklist is built on)."""
        return StudyQueries(self.store)


def screen_films(triager, shared_data: Path, want_suspicious: int, want_normal: int,
                 limit: int = 120) -> dict[str, list[Path]]:
    """NIH PNG films the model calls suspicious / likely normal (read in labels.csv order)."""
    with open(shared_data / "nih-cxr14" / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, list[Path]] = {"suspicious": [], "likely_normal": []}
    want = {"suspicious": want_suspicious, "likely_normal": want_normal}
    for row in rows[:limit]:
        path = shared_data / "nih-cxr14" / row["file"]
        decision = triager.triage_paths([path])[0].decision.value
        if decision in out and len(out[decision]) < want[decision]:
            out[decision].append(path)
        if all(len(out[k]) >= want[k] for k in want):
            return out
    raise RuntimeError(f"only {({k: len(v) for k, v in out.items()})} of {want} films found")


def add_file(store: JobStore, spool: Spool, path: Path, received_at: float) -> str:
    """Spool and record one DICOM file as the SCP does; returns its Study Instance UID."""
    data = path.read_bytes()
    ds = dcmread(path, stop_before_pixels=True)
    study, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
    dest = spool.store(study, sop, data)
    store.add_instance(InstanceRecord(sop, study, str(ds.SeriesInstanceUID), str(ds.SOPClassUID),
                                      str(ds.file_meta.TransferSyntaxUID), str(dest), len(data),
                                      "TESTSCU", received_at))
    return study


def build_triaged_node(root: Path, model_path: Path, shared_data: Path, sample_dicoms: dict[str, Path],
                       n_suspicious: int = 2, n_normal: int = 3, old_normal_age_s: float = 3 * 3600.0,
                       down_port: int = 9) -> TriagedNode:
    """Suspicious and likely-normal NIH films (one study each; the first likely normal was
    received ``old_normal_age_s`` ago), the canine DICOM (not assessable) and a two-film study;
    all triaged by the worker and delivered by the deliverer."""
    from cxr_triage.dicom_node.delivery.deliverer import Deliverer
    from cxr_triage.dicom_node.store import audit as A
    from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom, write_dicom
    from cxr_triage.dicom_node.worker.triage import TriageWorker, load_triager

    cfg = load_config(environ={}).replace(
        node={"state_dir": str(root / "state"), "quiet_period_s": 0.0},
        inference={"model_path": str(model_path), "threads": 1},
        delivery={"retry_initial_s": 3600.0},
    )
    dirs = StateDirs(root / "state").create()
    store = JobStore(dirs.queue_db)
    spool = Spool(dirs.spool)
    triager = load_triager(cfg)
    meta = triager.meta
    destinations: list[str] = [OUTBOX]
    audit = A.AuditLog(dirs.audit_log)
    worker = TriageWorker(cfg, store, dirs, Quarantine(dirs.quarantine), audit,
                          triager, destinations=lambda: list(destinations))
    deliverer = Deliverer(cfg, store, dirs.outbox, audit)
    node = TriagedNode(cfg, dirs, store, model_name=meta.name, model_version=meta.version)
    now = time.time()

    def triage(paths: list[Path], received_at: float) -> str:
        for p in paths:
            study = add_file(store, spool, p, received_at)
            node.instances += 1
        while worker.run_once():
            pass
        while deliverer.run_once():
            pass
        node.decisions[study] = StudyQueries(store).get_study(study)["decision"]
        node.received[study] = received_at
        return study

    films = screen_films(triager, shared_data, n_suspicious + 1, n_normal)
    wrapped = root / "films"
    wrapped.mkdir(exist_ok=True)

    patients: dict[str, int] = {}

    def wrap(png: Path, study_uid: str, n: int = 1) -> Path:
        # each study its own (made-up) patient and accession number, as a RIS would give
        k = patients.setdefault(study_uid, len(patients) + 1)
        ds = png_to_dicom(png, study_uid=study_uid, instance_number=n, patient_name=f"Testpatient^Alma{k}",
                          patient_id=f"PID-{k:04d}", accession_number=f"ACC{k:06d}")
        return write_dicom(ds, wrapped / f"{study_uid}_{n}.dcm")

    order: list[tuple[str, Path]] = [("likely_normal", p) for p in films["likely_normal"]]
    order += [("suspicious", p) for p in films["suspicious"][:n_suspicious]]
    for i, (_, png) in enumerate(order):
        received = now - 2400 + 120 * i          # the last hour, two minutes apart
        if i == 0:
            received = now - old_normal_age_s
        if i == len(order) - 1:                  # a PACS that is down, beside the outbox
            destinations.append(f"DOWNPACS@127.0.0.1:{down_port}")
        uid = generate_uid()
        study = triage([wrap(png, uid)], received)
        if i == 0:
            node.old_normal = study
        if i == len(order) - 1:
            node.failing_study = study
            destinations.pop()
    # A two-film study: one suspicious film and one likely normal one.
    uid = generate_uid()
    triage([wrap(films["suspicious"][n_suspicious], uid, 1), wrap(films["likely_normal"][0], uid, 2)],
           now - 300)
    triage([sample_dicoms[CANINE]], now - 1200)
    audit.close()
    return node
