"""End-to-end evaluation: measure what the PACS would receive, not what the model computes.

Each manifest film is wrapped into DICOM (its own study, so the study result is the film's),
sent to a running node with a pynetdicom SCU over one association, and the result SRs the node
delivers are collected by a local pynetdicom storage SCP. The same metrics are then computed
from the SRs, and every film whose delivered decision differs from offline inference on the
very same DICOM file is listed: a difference means the node (spool, queue, worker, SR
round-trip, configuration) changed an answer.

The node must deliver to this receiver: add ``<results_aet>@<this host>:<results_port>`` to its
``[delivery] destinations``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Sequence

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt

from cxr_triage.config import load_config, parse_destination
from cxr_triage.dicom_node.delivery.scu import associate
from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom, write_dicom
from cxr_triage.evaluation.sources import (
    Film,
    Scored,
    SourceError,
    read_sr_folder,
    scored_from_film_result,
    sr_results_by_uid,
)
from cxr_triage.inference.pipeline import Triager

log = logging.getLogger(__name__)

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


@dataclass
class SentFilm:
    """A manifest film as the DICOM instance that was sent."""

    film: Film
    path: Path
    study_instance_uid: str
    sop_instance_uid: str
    status: int | None = None


@dataclass
class EndToEndRun:
    """The outcome: delivered results per film, offline results, and where they differ."""

    sent: list[SentFilm]
    scored: list[Scored]
    offline: list[Scored] | None
    elapsed_s: float
    n_results: int
    model_names: list[str] = field(default_factory=list)
    source_offline: list[Scored] | None = None   # offline on the manifest's own files (PNG)

    def differences(self) -> list[dict[str, Any]]:
        if self.offline is None:
            return []
        out = []
        for s, e, o in zip(self.sent, self.scored, self.offline):
            if e.decision != o.decision:
                out.append({"file": s.film.file, "study_instance_uid": s.study_instance_uid,
                            "e2e": e.decision.value if e.decision else None,
                            "offline": o.decision.value if o.decision else None,
                            "e2e_score": e.score, "offline_score": o.score})
        return out

    def max_score_difference(self) -> float | None:
        if self.offline is None:
            return None
        diffs = [abs(e.score - o.score) for e, o in zip(self.scored, self.offline)
                 if e.score is not None and o.score is not None]
        return max(diffs) if diffs else None

    def vs_source_files(self) -> dict[str, Any] | None:
        """Delivered vs offline on the manifest's own files (what ``evaluate --model`` scores),
        over films assessed both ways: PNG films carry no header, so header-gated films (e.g.
        under 16) are assessed offline but refused by the node, and are left out here."""
        if self.source_offline is None:
            return None
        pairs = [(e, o) for e, o in zip(self.scored, self.source_offline) if e.assessable and o.assessable]
        diffs = [abs(e.score - o.score) for e, o in pairs if e.score is not None and o.score is not None]
        return {"n_compared": len(pairs), "n_differ": sum(e.decision != o.decision for e, o in pairs),
                "max_score_difference": max(diffs) if diffs else None,
                "n_gated_by_header": sum(not e.assessable and o.assessable
                                         for e, o in zip(self.scored, self.source_offline))}

    def summary(self) -> dict[str, Any]:
        differ = self.differences()
        return {
            "vs_source_files": self.vs_source_files(),
            "n_sent": len(self.sent),
            "n_results": self.n_results,
            "n_differ": len(differ) if self.offline is not None else None,
            "differ": differ,
            "offline_compared": self.offline is not None,
            "offline_on": "the same DICOM files, inference.pipeline.Triager with the delivered threshold",
            "max_score_difference": self.max_score_difference(),
            "elapsed_s": round(self.elapsed_s, 1),
            "models_in_srs": self.model_names,
        }


def received_file_bytes(event: Any) -> bytes:
    """The C-STORE data set of ``event`` as received, in the DICOM File Format (preamble, File
    Meta Information, data set).

    pynetdicom's ``STORE_RECV_CHUNKED_DATASET`` is process-wide: once any SCP in the process
    turns it on (the node's receiver does, to stream instances to its spool), every AE gets the
    data set in a file at ``event.dataset_path`` and ``event.encoded_dataset()`` holds only the
    File Meta Information. Both modes are read here."""
    try:
        path = event.dataset_path
    except AttributeError:
        path = None
    if path is None:  # not chunked: the data set is in memory
        return bytes(event.encoded_dataset())
    return Path(path).read_bytes()


class ResultReceiver:
    """A pynetdicom storage SCP that keeps every result SR it is sent (and acknowledges, but
    does not keep, anything else, e.g. summary images)."""

    def __init__(self, folder: Path, ae_title: str = "EVALRESULTS", port: int = 11119, host: str = "127.0.0.1"):
        self.folder = Path(folder)
        self.ae_title = ae_title
        self.port = port
        self.host = host
        self.server: Any = None
        self._lock = threading.Lock()
        self.sr_studies: set[str] = set()
        self.n_other = 0

    def _on_store(self, event: Any) -> int:
        sop_class = str(event.request.AffectedSOPClassUID)
        if not sop_class.startswith(SR_PREFIX):
            with self._lock:
                self.n_other += 1
            return 0x0000

        data = received_file_bytes(event)
        ds = dcmread(BytesIO(data), stop_before_pixels=True)
        study = str(ds.StudyInstanceUID)
        path = self.folder / study / f"{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        with self._lock:
            self.sr_studies.add(study)
        return 0x0000

    def start(self) -> "ResultReceiver":

        self.folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.require_called_aet = True
        self.server = ae.start_server((self.host, self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self.server.server_address[1])
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    def wait_for(self, study_uids: set[str], timeout_s: float) -> set[str]:
        """Wait until every study has a result SR; returns the studies still missing."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                missing = study_uids - self.sr_studies
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.25)

    def __enter__(self) -> "ResultReceiver":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _age_string(age: float | None) -> str | None:
    if age is None:
        return None
    return f"{int(age):03d}Y" if age >= 1 else f"{max(int(round(age * 12)), 0):03d}M"


def wrap_films(films: Sequence[Film], out_dir: Path, transfer_syntax_uid: str | None = None,
               bits_stored: int = 8) -> list[SentFilm]:
    """One DICOM study per film (DX For Presentation), with the manifest's age, sex and view so
    the node's intended-use gate sees what it would see in a department. Patient IDs are
    pseudonymous (``EVAL-<n>``)."""
    out_dir = Path(out_dir)
    sent = []
    for i, film in enumerate(films, start=1):
        study_uid = generate_uid()
        sex = film.sex if film.sex in ("M", "F", "O") else "O"
        view = film.view if film.view in ("PA", "AP", "LL", "RL") else "PA"
        ds = png_to_dicom(film.path, transfer_syntax_uid=transfer_syntax_uid or ExplicitVRLittleEndian,
                          bits_stored=bits_stored, study_uid=study_uid,
                          patient_name=f"EVAL^{i:05d}", patient_id=f"EVAL-{i:05d}",
                          patient_age=_age_string(film.age), patient_sex=sex, view_position=view,
                          accession_number=f"EV{i:08d}")
        path = write_dicom(ds, out_dir / f"{i:05d}.dcm")
        # the UIDs as written (pydicom's set_pixel_data may have issued a new SOP Instance UID)
        sent.append(SentFilm(film, path, str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)))
    return sent


def send_films(sent: Sequence[SentFilm], node: str, calling_aet: str = "EVALSCU", timeout_s: float = 60.0) -> None:
    """C-STORE every wrapped film to ``AE@host:port`` over one association (re-opened if
    lost); each film's DIMSE status is kept on it."""
    ae_title, host, port = parse_destination(node)
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    pairs = sorted({(str(dcmread(s.path, stop_before_pixels=True).SOPClassUID),
                     str(dcmread(s.path, stop_before_pixels=True).file_meta.TransferSyntaxUID)) for s in sent})
    for sop_class, ts in pairs:
        ae.add_requested_context(sop_class, [ts])
    assoc = None
    try:
        for s in sent:
            if assoc is None or not assoc.is_established:
                assoc = associate(ae, host, port, ae_title=ae_title)
                if not assoc.is_established:
                    raise SourceError(f"node {node} refused or did not answer the association")
            status = assoc.send_c_store(dcmread(s.path))
            s.status = int(getattr(status, "Status", -1)) if status else None
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()
    failed = [s for s in sent if s.status not in (0x0000, 0xB000, 0xB006, 0xB007)]
    if failed:
        raise SourceError(f"{len(failed)} film(s) not stored by the node, e.g. {failed[0].film.file} "
                          f"(status {failed[0].status})")


def offline_results(sent: Sequence[SentFilm], model_path: Path, cfg: Any, threshold: float | None,
                    operating_point: str | None) -> tuple[list[Scored], list[Scored]]:
    """Offline inference at the threshold the node delivered with: on the same DICOM files
    (the comparison that isolates the node), and on the manifest's own files."""
    cfg = cfg if cfg is not None else load_config(None)
    triager = Triager(cfg.replace(inference={"site_threshold_file": ""}), model_path=model_path,
                      threshold=threshold, operating_point=operating_point)
    same = [scored_from_film_result(r) for r in triager.triage_paths([s.path for s in sent])]
    source = [scored_from_film_result(r) for r in triager.triage_paths([s.film.path for s in sent])]
    return same, source


def run_end_to_end(
    films: Sequence[Film], node: str, *, results_aet: str = "EVALRESULTS", results_port: int = 11119,
    results_host: str = "127.0.0.1", calling_aet: str = "EVALSCU", timeout_s: float = 600.0,
    work_dir: Path, cfg: Any = None, offline_model: Path | None = None,
    receiver: ResultReceiver | None = None,
) -> EndToEndRun:
    """Wrap, send, collect the SRs, match them to films, and run offline inference to compare.
    Pass a started ``receiver`` to reuse one; otherwise one is started on ``results_port``."""
    work_dir = Path(work_dir)
    own = receiver is None
    rx = receiver or ResultReceiver(work_dir / "srs", results_aet, results_port, results_host).start()
    start = time.monotonic()
    try:
        sent = wrap_films(films, work_dir / "dicom")
        log.info("end-to-end: sending films", extra={"n": len(sent), "node": node, "results": rx.destination})
        send_films(sent, node, calling_aet)
        missing = rx.wait_for({s.study_instance_uid for s in sent}, timeout_s)
        elapsed = time.monotonic() - start
    finally:
        if own:
            rx.stop()
    if missing:
        raise SourceError(f"no result SR for {len(missing)} of {len(sent)} studies after {timeout_s:.0f} s: is the node "
                          f"delivering to {rx.destination}?")
    parsed = [p for p in read_sr_folder(rx.folder) if p.study_instance_uid in {s.study_instance_uid for s in sent}]
    by_sop, by_study = sr_results_by_uid(parsed)
    unread = [s for s in sent if s.sop_instance_uid not in by_sop and s.study_instance_uid not in by_study]
    if unread:  # an SR arrived for each study (wait_for), but not one this harness can read
        raise SourceError(f"the result SR received for {len(unread)} of {len(sent)} studies is not a readable "
                          f"cxr-triage result SR, e.g. study {unread[0].study_instance_uid} "
                          f"({unread[0].film.file}) under {rx.folder}")
    scored = [by_sop.get(s.sop_instance_uid) or by_study[s.study_instance_uid] for s in sent]
    offline = source_offline = None
    if offline_model is not None:
        applied = {(x.operating_point, x.threshold) for x in scored if x.threshold is not None}
        op, thr = next(iter(applied)) if len(applied) == 1 else (None, None)
        offline, source_offline = offline_results(sent, Path(offline_model), cfg, thr, op)
    models = sorted({f"{p.model_name} {p.model_version}" for p in parsed})
    return EndToEndRun(sent, scored, offline, elapsed, len(parsed), models, source_offline)
