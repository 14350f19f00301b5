"""Scoring films with an ONNX model file for the test report, exactly as the worker does.

Each film goes through the worker's reader and the shared ``preprocess()`` with the spec
stored in the model; the session comes from the one factory,
:func:`cxr_triage.inference.scorer.onnx_session`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from cxr_triage.contract.files import file_sha256
from cxr_triage.contract.model_file import INPUT_NAME, METADATA_KEY, SCORE_OUTPUT, ModelMetadata
from cxr_triage.contract.preprocessing import PreprocessSpec, preprocess
from cxr_triage.contract.result import NotAssessable
from cxr_triage.evaluation.model_checks import onnx_feature_model
from cxr_triage.inference.gate import GateSettings, check_film
from cxr_triage.inference.reader import read_film
from cxr_triage.inference.scorer import ModelError, onnx_session
from cxr_triage.training.adapters.shared import SHARED_FOLDERS
from cxr_triage.training.manifest import Entry, resolve

MAX_NAMED = 5


class ReportError(ValueError):
    """The report cannot be made as asked (missing films, no films in the split, ...)."""


def named(head: str, items: Sequence[str]) -> str:
    """``head: first, second, ... and N more`` (at most :data:`MAX_NAMED` named)."""
    more = f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else ""
    return f"{head}: {', '.join(items[:MAX_NAMED])}{more}"


def model_session(model_path: str | Path, threads: int = 2) -> tuple[Any, ModelMetadata]:
    """(ONNX Runtime session, the model's :class:`ModelMetadata`) of a cxr-triage model file.

    Raises ReportError when the file is missing, not an ONNX model or has no cxr-triage metadata."""
    path = Path(model_path)
    if not path.is_file():
        raise ReportError(f"model file not found: {path}")
    try:
        sess = onnx_session(path, threads)
    except ModelError as exc:
        cause = exc.__cause__ or exc
        raise ReportError(f"{path}: not an ONNX model ({type(cause).__name__}: {cause})") from None
    props = sess.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ReportError(f"{path}: no {METADATA_KEY!r} metadata: not a cxr-triage model")
    return sess, ModelMetadata.from_json(props[METADATA_KEY])


def model_identity(model_path: str | Path) -> dict[str, Any]:
    """name, version, thresholds and default operating point of an ONNX model file."""
    _, meta = model_session(model_path, threads=1)
    return {"path": str(model_path), "name": meta.name, "version": meta.version,
            "sha256": file_sha256(model_path), "thresholds": dict(meta.thresholds),
            "default_operating_point": meta.default_operating_point}


#: why the report scores every film of the split, and the node would not (``intended_use_gate``)
GATE_BYPASS = ("scored without the intended-use gate: the figures are meant for the films' content, so every "
               "film of the split is scored, including any the gate's pixel and header checks would refuse; "
               "`cxr-triage evaluate` applies the gate as the node does")
#: added when the films are the project's shared development films
_SHARED_CLAUSE = ("; the shared development films are downsampled copies (224-512 px) that the gate's pixel "
                  "checks would refuse")


def gate_bypass(sources: Iterable[str]) -> str:
    """:data:`GATE_BYPASS`, with why the shared development films in particular would be refused
    when any of ``sources`` (the films' manifest ``source``) is a shared folder
    (:data:`~cxr_triage.training.adapters.shared.SHARED_FOLDERS`)."""
    return GATE_BYPASS + (_SHARED_CLAUSE if set(sources) & set(SHARED_FOLDERS) else "")


def input_batches(paths: Sequence[Path], spec: PreprocessSpec, batch: int,
                  gate_refusals: dict[str, int] | None = None) -> Iterator[np.ndarray]:
    """(n, 1, S, S) preprocessed films, ``batch`` at a time. Once a film cannot be read the
    rest are only read (to name them all): ReportError naming them (the first few, then a
    count) at the end. ``gate_refusals``, when given, counts per reason code the films the
    gate's pixel checks (:func:`cxr_triage.inference.gate.check_film`, default limits) would
    refuse; they are scored all the same (:data:`GATE_BYPASS`)."""
    bad: list[str] = []
    for i in range(0, len(paths), batch):
        xs = []
        for p in paths[i:i + batch]:
            try:
                film = read_film(p)
                xs.append(preprocess(np.asarray(film.pixels, dtype=np.float32), spec))
            except Exception as exc:  # noqa: BLE001 - one unreadable film is reported, not a traceback
                bad.append(f"{p.name} ({type(exc).__name__})")
                continue
            if gate_refusals is not None:
                try:
                    check_film(film, GateSettings())
                except NotAssessable as refusal:
                    gate_refusals[refusal.reason.value] = gate_refusals.get(refusal.reason.value, 0) + 1
        if not bad:
            yield np.stack(xs)
    if bad:
        raise ReportError(named(f"{len(bad)} film(s) could not be read", bad))


def score_films(model_path: str | Path, paths: Sequence[Path], batch: int = 32, threads: int = 2) -> np.ndarray:
    """(N,) calibrated scores from the ONNX file (ONNX Runtime), preprocessing from its metadata.

    Raises ReportError naming the films that cannot be read (the first few, then a count)."""
    sess, meta = model_session(model_path, threads)
    out = [sess.run([SCORE_OUTPUT], {INPUT_NAME: x})[0] for x in input_batches(paths, meta.preprocessing, batch)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def model_outputs(model_path: str | Path, paths: Sequence[Path], batch: int = 32,
                  threads: int = 2, gate_refusals: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """One ONNX Runtime pass over the films: ``score`` (N,), ``nodule_score`` (N,) when the
    model has that output, ``heatmap`` (N, h, w) and ``features`` (N, C) (the pooled last
    feature map, :func:`cxr_triage.evaluation.model_checks.onnx_feature_model`).
    ``gate_refusals``: see :func:`input_batches`.

    Raises ReportError naming the films that cannot be read."""
    _, meta = model_session(model_path, threads=1)
    sess = onnx_session(onnx_feature_model(model_path), threads)
    names = [o.name for o in sess.get_outputs()]
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for x in input_batches(paths, meta.preprocessing, batch, gate_refusals):
        for n, v in zip(names, sess.run(names, {INPUT_NAME: x})):
            out[n].append(np.asarray(v))
    return {n: (np.concatenate(v) if v else np.zeros(0)).astype(np.float64) for n, v in out.items()}


def check_films(entries: Sequence[Entry], root: Path) -> None:
    """ReportError naming the films that are not found under ``root`` (first few, then a count)."""
    missing = [e.file for e in entries if not resolve(e, root).is_file()]
    if missing:
        raise ReportError(named(f"{len(missing)} of {len(entries)} film(s) not found under {root} "
                                "(wrong --data-root?)", missing))
