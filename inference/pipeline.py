"""The whole path of a film, in one place: read -> gate -> preprocess -> score -> decide.

:class:`Triager` is what the node's worker, ``cxr-triage predict``, the evaluation and the
benchmarks call. It holds one ONNX Runtime session (per process) and the operating threshold,
and turns every film, good or bad, into a :class:`FilmResult` with per-stage timings.

A model with a nodule/mass output (``nodule_score`` and nodule/mass operating points in its
metadata) also gives each scored film its nodule/mass score, threshold and flag: an added
finding that never changes the triage decision. A heatmap is kept on the result only when
the model's heatmap passed validation (``ModelMetadata.heatmap_validated``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from pydicom import Dataset

from cxr_triage.config import Config, load_config, resolve_path
from cxr_triage.contract.decision import decide
from cxr_triage.contract.nodule_point import nodule_point
from cxr_triage.contract.preprocessing import preprocess
from cxr_triage.contract.result import Decision, FilmResult, NotAssessable, NotAssessableReason
from cxr_triage.inference import gate
from cxr_triage.inference.reader import (
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    Film,
    load_dataset,
    read_film,
    sniff_kind,
)
from cxr_triage.inference.resolution import WORKER_FLOOR
from cxr_triage.inference.scorer import ModelError, get_scorer
from cxr_triage.inference.site_threshold import site_threshold_from_config
from cxr_triage.paths import bundled_model_path

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """A film between gate and model: its result so far and its model input (None if refused)."""

    result: FilmResult
    tensor: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def resolve_model_path(cfg: Config, model_path: str | Path | None = None) -> Path:
    """Explicit path > ``[inference] model_path`` > the bundled model."""
    if model_path:
        path = Path(model_path)
    elif cfg.inference.model_path:
        path = resolve_path(cfg, cfg.inference.model_path)
    else:
        path = bundled_model_path()
    if not path.is_file():
        raise ModelError(
            f"model file not found: {path} (train one with `make train`, or pass --model / set "
            "[inference] model_path)"
        )
    return path


class Triager:
    """Reader, gate, preprocessing, ONNX scorer and decision, configured once.

    Threshold, first that applies: ``threshold`` (explicit probability, reported under
    ``operating_point`` or "explicit"); an explicit ``operating_point`` name from the model's
    stored thresholds; ``[inference] site_threshold_file`` (commissioned, bound to the model's
    SHA-256); ``[inference] operating_point``; the model's default operating point.

    Nodule/mass threshold (models with that output only): ``nodule_operating_point``, else
    ``[inference] nodule_operating_point``, else the model's default nodule/mass operating
    point. ``nodule_operating_point`` / ``nodule_threshold`` are None for a model without it.

    ``keep_pixels``: each decoded film's pixels stay on its result (``FilmResult.pixels``), for
    a caller that shows the film afterwards (the node's summary image) without decoding it again.
    """

    def __init__(
        self,
        cfg: Config | None = None,
        *,
        model_path: str | Path | None = None,
        operating_point: str | None = None,
        threshold: float | None = None,
        nodule_operating_point: str | None = None,
        threads: int | None = None,
        batch_size: int | None = None,
        keep_pixels: bool = False,
    ):
        cfg = cfg if cfg is not None else load_config()
        self.keep_pixels = keep_pixels
        inf = cfg.inference
        path = resolve_model_path(cfg, model_path)
        self.scorer = get_scorer(
            path, threads=threads or inf.threads, batch_size=batch_size or inf.batch_size
        )
        self.meta = self.scorer.metadata
        if threshold is not None:
            if not 0.0 <= float(threshold) <= 1.0:
                raise ValueError(f"threshold {threshold} is not a probability")
            self.operating_point, self.threshold = operating_point or "explicit", float(threshold)
        elif inf.site_threshold_file and not operating_point:
            # a commissioned site threshold, refused when it was made for another model file
            site = site_threshold_from_config(cfg, path)
            if site is None:  # pragma: no cover - the key was checked just above
                raise ModelError("site_threshold_file is empty")
            self.operating_point, self.threshold = site.operating_point, site.threshold
        else:
            try:
                self.operating_point, self.threshold = self.meta.threshold(
                    operating_point or inf.operating_point or None
                )
            except KeyError as exc:
                raise ModelError(str(exc.args[0])) from None
        self.nodule_operating_point: str | None = None
        self.nodule_threshold: float | None = None
        if self.scorer.has_nodule:
            try:
                nodule = self.meta.nodule_threshold(
                    nodule_operating_point or inf.nodule_operating_point or None)
            except KeyError as exc:
                raise ModelError(str(exc.args[0])) from None
            if nodule is not None:
                self.nodule_operating_point, self.nodule_threshold = nodule
        #: the served nodule/mass point with its validation figures (None: no such output)
        self.nodule_point = (nodule_point(self.meta, self.nodule_operating_point)
                             if self.nodule_operating_point is not None else None)
        self.gate_settings = gate.GateSettings(
            min_age_years=float(inf.min_age_years), min_image_size=int(inf.min_image_size)
        )
        self.max_pixels = int(inf.max_pixels)
        #: JPEG 2000 decoded at a reduced resolution keeping these sides (None: full resolution)
        self.floor = (max(WORKER_FLOOR[0], int(inf.min_image_size)), WORKER_FLOOR[1]) \
            if inf.j2k_reduced_resolution else None
        self.spec = self.meta.preprocessing

    # ------------------------------------------------------------------ public entry points

    def triage_dataset(self, ds: Dataset, source: str = "") -> FilmResult:
        """One received DICOM instance (the node's worker path)."""
        pending = self._prepare_dataset(ds, source, decode_ms=0.0)
        return self._finish([pending])[0]

    def triage_file(self, path: str | Path) -> FilmResult:
        """One DICOM or PNG/JPEG file."""
        return self._finish([self._prepare_path(Path(path))])[0]

    def triage_paths(self, paths: Iterable[str | Path]) -> list[FilmResult]:
        """Files or folders (searched recursively), DICOM or PNG/JPEG, scored in batches."""
        results: list[FilmResult] = []
        chunk: list[_Pending] = []
        for path in expand_paths(paths):
            chunk.append(self._prepare_path(path))
            if len(chunk) >= self.scorer.batch_size:
                results.extend(self._finish(chunk))
                chunk = []
        if chunk:
            results.extend(self._finish(chunk))
        return results

    # ------------------------------------------------------------------ stages

    def _prepare_path(self, path: Path) -> _Pending:
        start = time.perf_counter()
        try:
            if sniff_kind(path) == "image" or path.suffix.lower() in IMAGE_SUFFIXES:
                film = read_film(path, max_pixels=self.max_pixels)
                return self._prepare_film(film, FilmResult(Decision.NOT_ASSESSABLE, source=str(path)),
                                          {"decode": _ms(start), "gate": 0.0})
            ds = load_dataset(path)
        except NotAssessable as exc:
            return self._refused(FilmResult(Decision.NOT_ASSESSABLE, source=str(path)), exc,
                                 {"decode": _ms(start)})
        except Exception as exc:  # one bad file must not stop a batch
            log.exception("unexpected error reading a file")
            return self._refused(FilmResult(Decision.NOT_ASSESSABLE, source=str(path)),
                                 NotAssessable(NotAssessableReason.UNDECODABLE,
                                               f"unexpected error: {type(exc).__name__}: {exc}"),
                                 {"decode": _ms(start)})
        return self._prepare_dataset(ds, str(path), decode_ms=_ms(start))

    def _prepare_dataset(self, ds: Dataset, source: str, decode_ms: float) -> _Pending:
        result = FilmResult(
            Decision.NOT_ASSESSABLE,
            source=source,
            sop_instance_uid=_uid(ds, "SOPInstanceUID"),
            series_instance_uid=_uid(ds, "SeriesInstanceUID"),
            study_instance_uid=_uid(ds, "StudyInstanceUID"),
            sop_class_uid=_uid(ds, "SOPClassUID"),
        )
        timings = {"decode": decode_ms}
        start = time.perf_counter()
        try:
            gate.check_header(ds, self.gate_settings)
        except NotAssessable as exc:
            timings["gate"] = _ms(start)
            return self._refused(result, exc, timings)
        except Exception as exc:  # noqa: BLE001 - malformed values (e.g. IS "abc") in the header
            timings["gate"] = _ms(start)
            return self._refused(result, NotAssessable(
                NotAssessableReason.UNDECODABLE, f"malformed header ({type(exc).__name__}: {exc})"
            ), timings)
        timings["gate"] = _ms(start)
        start = time.perf_counter()
        try:
            film = read_film(ds, max_pixels=self.max_pixels, floor=self.floor)
        except NotAssessable as exc:
            timings["decode"] += _ms(start)
            return self._refused(result, exc, timings)
        film.source = source
        timings["decode"] = round(timings["decode"] + _ms(start), 3)
        return self._prepare_film(film, result, timings)

    def _prepare_film(self, film: Film, result: FilmResult, timings: dict[str, float]) -> _Pending:
        if self.keep_pixels:
            result.pixels = film.pixels
        start = time.perf_counter()
        try:
            gate.check_film(film, self.gate_settings)
        except NotAssessable as exc:
            timings["gate"] = round(timings.get("gate", 0.0) + _ms(start), 3)
            return self._refused(result, exc, timings)
        timings["gate"] = round(timings.get("gate", 0.0) + _ms(start), 3)
        start = time.perf_counter()
        tensor = preprocess(film.pixels, self.spec)
        timings["preprocess"] = _ms(start)
        return _Pending(result, tensor, timings)

    def _refused(self, result: FilmResult, exc: NotAssessable, timings: dict[str, float]) -> _Pending:
        result.decision = Decision.NOT_ASSESSABLE
        result.reason, result.reason_detail = exc.reason, exc.detail
        log.info("film not assessable", extra={"sop_instance_uid": result.sop_instance_uid,
                                               "study_uid": result.study_instance_uid,
                                               "reason": exc.reason.value})
        return _Pending(result, None, timings)

    def _finish(self, pending: list[_Pending]) -> list[FilmResult]:
        """Score the films that passed the gate in one batch, then decide each."""
        ready = [p for p in pending if p.tensor is not None]
        if ready:
            start = time.perf_counter()
            out = self.scorer.score(np.stack([p.tensor for p in ready if p.tensor is not None]))
            per_film = _ms(start) / len(ready)  # the batch's time, shared equally
            # a heatmap that failed validation is not shown anywhere, so not kept either
            heatmaps = out.heatmaps if self.meta.heatmap_validated else None
            nodules = out.nodule_scores if self.nodule_threshold is not None else None
            for i, p in enumerate(ready):
                score = float(out.scores[i])
                p.result.score = score
                p.result.threshold = self.threshold
                p.result.operating_point = self.operating_point
                p.result.decision = decide(score, self.threshold)
                p.result.heatmap = heatmaps[i] if heatmaps is not None else None
                extra = {"sop_instance_uid": p.result.sop_instance_uid,
                         "study_uid": p.result.study_instance_uid,
                         "decision": p.result.decision.value, "score": round(score, 4)}
                if nodules is not None and self.nodule_threshold is not None:
                    nodule = float(nodules[i])
                    p.result.nodule_score = nodule
                    p.result.nodule_threshold = self.nodule_threshold
                    # the rule of decide(): at or above the threshold, and a NaN is flagged;
                    # no flag at all from a model whose flag is not to be shown (score only)
                    p.result.nodule_flag = ((math.isnan(nodule) or nodule >= self.nodule_threshold)
                                            if self.meta.nodule_flag_shown else None)
                    p.result.nodule_point = self.nodule_point.statement() if self.nodule_point else None
                    extra.update(nodule_score=round(nodule, 4), nodule_flag=p.result.nodule_flag)
                p.timings["model"] = round(per_film, 3)
                log.info("film triaged", extra=extra)
        for p in pending:
            p.result.model_name, p.result.model_version = self.meta.name, self.meta.version
            p.timings["total"] = round(sum(p.timings.values()), 3)
            p.result.timings_ms = p.timings
        return [p.result for p in pending]


def _uid(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value) if value else None


def expand_paths(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files as given; folders searched recursively for DICOM/PNG/JPEG files, sorted."""
    for item in paths:
        path = Path(item)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    candidate = Path(root) / name
                    if name.startswith("."):
                        continue
                    suffix = candidate.suffix.lower()
                    if suffix in IMAGE_SUFFIXES or suffix in DICOM_SUFFIXES or sniff_kind(candidate) != "unknown":
                        yield candidate
        else:
            yield path
