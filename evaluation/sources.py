"""Inputs of an evaluation: the ground-truth manifest and the scores to judge.

Scores come from one of three places, all reduced to one :class:`Scored` per manifest film:
running a model (the same ``Triager`` the node uses), a scores CSV, or a folder of result SRs
the node produced. A film without a score is an error, never silently dropped: a harness that
loses films loses exactly the hard ones.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from cxr_triage.config import load_config
from cxr_triage.contract import manifest as _manifest
from cxr_triage.contract.files import file_sha256
from cxr_triage.contract.manifest import ManifestError, ManifestRow
from cxr_triage.contract.model_file import METADATA_KEY, ModelMetadata
from cxr_triage.contract.result import Decision
from cxr_triage.inference.pipeline import Triager
from cxr_triage.inference.scorer import ModelError, onnx_session

#: the columns a Film has fields for (the shared format's, :mod:`cxr_triage.contract.manifest`);
#: every other column (``split``, UIDs, sizes...) is kept in ``Film.extra``. ``source`` is the
#: data source (site, hospital, public set) reports group by, as in training; a manifest with a
#: ``site`` column instead is read the same way (``site`` is an alias of ``source`` on read).
MANIFEST_COLUMNS = ("file", "label", "patient_id", "source", "age", "sex", "view", "findings", "nodule_or_mass")
#: how many films a message names before it gives the count of the rest
MAX_NAMED = 5


class SourceError(ValueError):
    """A manifest or score source that cannot be evaluated as given (with the reason)."""


@dataclass
class Film:
    """One manifest row: the film and its ground truth."""

    file: str                  # as written in the manifest
    path: Path                 # resolved against the manifest's folder
    label: int                 # 1 abnormal, 0 normal
    patient_id: str
    key: str                   # identity used to detect threshold/evaluation overlap
    source: str = ""           # the data source (manifest column ``source``, or its alias ``site``)
    age: float | None = None
    sex: str = ""
    view: str = ""
    findings: str = ""
    nodule_or_mass: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def finding_list(self) -> list[str]:
        return [f.strip() for f in self.findings.split("|") if f.strip() and f.strip() != "No Finding"]


@dataclass
class Scored:
    """What the system said about one film (score None when it was not assessable)."""

    score: float | None
    decision: Decision | None = None
    reason: str | None = None
    threshold: float | None = None
    operating_point: str | None = None

    @property
    def assessable(self) -> bool:
        return self.decision is not Decision.NOT_ASSESSABLE and self.score is not None


def film_key(path: Path, fallback: str) -> str:
    """SHA-256 of the file's bytes (the same film under two names is one film); the manifest
    name when the file is not readable here (e.g. a scores CSV evaluated elsewhere)."""
    try:
        return "sha256:" + file_sha256(path)
    except OSError:
        return "name:" + fallback


def parse_label(value: str, where: str) -> int:
    """1 for an abnormal label, 0 for a normal one (the shared spellings,
    :mod:`cxr_triage.contract.manifest`); SourceError naming ``where`` otherwise. Shared with
    reconcile's outcome files."""
    try:
        return _manifest.parse_label(value, where)
    except ManifestError as exc:
        raise SourceError(str(exc)) from None


def film_from_row(row: ManifestRow, base: Path, hash_files: bool = True) -> Film:
    """The evaluation's view of one parsed manifest row (``file`` resolved against ``base``)."""
    resolved = (base / row.file).resolve()
    return Film(
        file=row.file, path=resolved, label=row.label,
        patient_id=row.patient_id or f"film:{row.file}",
        key=film_key(resolved, row.file) if hash_files else "name:" + row.file,
        source=row.source or row.site, age=row.age, sex=row.sex.upper(), view=row.view.upper(), findings=row.findings,
        nodule_or_mass=row.nodule_or_mass,
        extra={k: v for k, v in row.raw.items() if k not in MANIFEST_COLUMNS and not (k == "site" and not row.source)},
    )


def read_manifest(path: Path, base: Path | None = None, hash_files: bool = True) -> list[Film]:
    """Read ``file,label[,patient_id,source,age,sex,view,findings,nodule_or_mass,...]``
    (``site`` is read as ``source`` when there is no ``source`` column).

    ``file`` is relative to ``base`` (default: the manifest's folder). Without ``patient_id``
    each film is its own patient (the bootstrap then resamples films). SourceError for a bad
    or missing manifest."""
    path = Path(path)
    base = Path(base) if base else path.parent
    if not path.is_file():
        raise SourceError(f"manifest not found: {path}")
    try:
        rows = _manifest.read_manifest_rows(path)
    except ManifestError as exc:
        raise SourceError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: not readable ({exc})") from None
    seen: set[str] = set()
    for row in rows:
        if row.file in seen:
            raise SourceError(f"{path}:{row.line}: film {row.file!r} listed twice")
        seen.add(row.file)
    return [film_from_row(row, base, hash_files) for row in rows]


def write_manifest(films: Iterable[Film], path: Path) -> Path:
    """Write films back as a manifest whose ``file`` column is an absolute path."""
    films = list(films)
    extra_cols = sorted({k for f in films for k in f.extra})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*MANIFEST_COLUMNS, *extra_cols])
        for f in films:
            w.writerow([str(f.path), _manifest.label_text(f.label), f.patient_id, f.source,
                        _manifest.age_text(f.age), f.sex, f.view, f.findings,
                        int(f.nodule_or_mass), *(f.extra.get(c, "") for c in extra_cols)])
    return path


def named(head: str, items: Sequence[str], limit: int = MAX_NAMED) -> str:
    """``"<head>: a, b, c and 7 more"``: the first few names, then a count."""
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{head}: {', '.join(items[:limit])}{more}"


def check_films_exist(films: Sequence[Film], base: Path | None = None) -> list[Film]:
    """The films whose file is not found (for commands that read the pixels)."""
    return [f for f in films if not f.path.is_file()]


def require_films(films: Sequence[Film], where: str, allow_missing: bool = False) -> tuple[list[Film], list[str]]:
    """(films found, warning lines). SourceError naming the missing films (first few, then a
    count) unless ``allow_missing``; SourceError in any case when none is found."""
    missing = check_films_exist(films)
    if not missing:
        return list(films), []
    names = [f.file for f in missing]
    head = f"{len(missing)} of {len(films)} film(s) not found (relative to {where})"
    if len(missing) == len(films) or not allow_missing:
        hint = "; give --data-root" if len(missing) == len(films) else "; give --data-root, or --allow-missing"
        raise SourceError(named(head, names) + hint)
    found = [f for f in films if f.path.is_file()]
    return found, [named(head + ", left out", names)]


def unassessable_lines(films: Sequence[Film], scored: Sequence[Scored]) -> list[str]:
    """One line per not-assessable reason with the films it hit (first few, then a count);
    unreadable films (``undecodable``) first."""
    by_reason: dict[str, list[str]] = {}
    for f, s in zip(films, scored):
        if not s.assessable:
            by_reason.setdefault(s.reason or "unknown", []).append(f.file)
    order = sorted(by_reason, key=lambda r: (r != "undecodable", r))
    return [named(f"{len(by_reason[r])} film(s) not assessable ({r})", by_reason[r]) for r in order]


def require_assessable(films: Sequence[Film], scored: Sequence[Scored]) -> None:
    """SourceError, naming the films and reasons, when no film is assessable."""
    if films and not any(s.assessable for s in scored):
        raise SourceError(f"none of the {len(films)} film(s) is assessable: " + "; ".join(unassessable_lines(films, scored)))


# --------------------------------------------------------------------------- scores CSV

def read_scores_csv(path: Path, films: Sequence[Film]) -> list[Scored]:
    """``file,score[,decision,reason,threshold,operating_point]`` matched to the manifest by
    ``file`` (as written, or as resolved path, or by file name when unambiguous). An empty
    score needs decision ``not_assessable``."""
    path = Path(path)
    rows: dict[str, dict[str, str]] = {}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"file", "score"} <= set(reader.fieldnames or []):
            raise SourceError(f"{path}: scores CSV needs columns file and score")
        for csv_row in reader:
            rows[csv_row["file"].strip()] = csv_row
    by_name: dict[str, list[str]] = {}
    for k in rows:
        by_name.setdefault(Path(k).name, []).append(k)
    out: list[Scored] = []
    missing: list[str] = []
    for film in films:
        row = rows.get(film.file) or rows.get(str(film.path))
        if row is None and len(by_name.get(film.path.name, [])) == 1:
            row = rows[by_name[film.path.name][0]]
        if row is None:
            missing.append(film.file)
            continue
        out.append(_scored_from_row(row, f"{path}: {film.file}"))
    if missing:
        raise SourceError(f"{path}: no score for {len(missing)} manifest film(s), e.g. {', '.join(missing[:3])}")
    return out


def _scored_from_row(row: dict[str, str], where: str) -> Scored:
    raw_score = (row.get("score") or "").strip()
    decision_txt = (row.get("decision") or "").strip()
    decision = Decision(decision_txt) if decision_txt else None
    score = float(raw_score) if raw_score else None
    if score is not None and not math.isfinite(score):
        raise SourceError(f"{where}: score {raw_score!r} is not finite")
    if score is None and decision is not Decision.NOT_ASSESSABLE:
        raise SourceError(f"{where}: empty score but decision is not 'not_assessable'")
    thr = (row.get("threshold") or "").strip()
    return Scored(score=score, decision=decision, reason=(row.get("reason") or "").strip() or None,
                  threshold=float(thr) if thr else None, operating_point=(row.get("operating_point") or None))


def write_scores_csv(films: Sequence[Film], scored: Sequence[Scored], path: Path) -> Path:
    """The scores an evaluation used, re-readable by :func:`read_scores_csv`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "score", "decision", "reason", "threshold", "operating_point"])
        for f, s in zip(films, scored):
            w.writerow([f.file, "" if s.score is None else repr(float(s.score)),
                        s.decision.value if s.decision else "", s.reason or "",
                        "" if s.threshold is None else repr(float(s.threshold)), s.operating_point or ""])
    return path


# --------------------------------------------------------------------------- model

def scored_from_film_result(result: Any) -> Scored:
    """A cxr_triage.inference FilmResult (or anything with the same fields) as a Scored."""
    decision = result.decision if isinstance(result.decision, Decision) else Decision(result.decision)
    reason: Any = getattr(result, "reason", None)
    return Scored(
        score=None if decision is Decision.NOT_ASSESSABLE else result.score,
        decision=decision,
        reason=reason.value if hasattr(reason, "value") else reason,
        threshold=getattr(result, "threshold", None),
        operating_point=getattr(result, "operating_point", None),
    )


def model_info(model_path: Path) -> dict[str, Any]:
    """Name, version, SHA-256 and stored thresholds of an ONNX model: {path, sha256, name,
    version, metadata (ModelMetadata)}. The session comes from the one factory
    (:func:`cxr_triage.inference.scorer.onnx_session`). SourceError for a file ONNX Runtime
    cannot load or one without the cxr-triage metadata entry."""
    model_path = Path(model_path)
    try:
        sess = onnx_session(model_path, threads=1)
    except ModelError as exc:
        raise SourceError(str(exc)) from None
    props = sess.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise SourceError(f"{model_path}: no {METADATA_KEY!r} metadata: not a cxr-triage model")
    meta = ModelMetadata.from_json(props[METADATA_KEY])
    digest = file_sha256(model_path)
    return {"path": str(model_path), "sha256": digest, "name": meta.name, "version": meta.version,
            "metadata": meta}


def scores_from_model(films: Sequence[Film], model_path: Path, cfg: Any = None,
                      operating_point: str | None = None, keep_site_threshold: bool = False) -> list[Scored]:
    """Triage every manifest film with the same pipeline the node runs (reader, gate, scorer,
    decision). PNG films have no DICOM header, so the manifest's age is not gated here.

    The decision uses the model's stored operating point (``operating_point`` or its default);
    a configured site threshold file applies only with ``keep_site_threshold`` (it is bound to
    one model file, and the evaluation's thresholds come from its own ThresholdSet anyway)."""
    cfg = cfg if cfg is not None else load_config(None)
    if not keep_site_threshold:
        cfg = cfg.replace(inference={"site_threshold_file": ""})
    triager = Triager(cfg, model_path=Path(model_path), operating_point=operating_point)
    results = triager.triage_paths([f.path for f in films])
    if len(results) != len(films):
        raise SourceError(f"model returned {len(results)} results for {len(films)} films")
    return [scored_from_film_result(r) for r in results]


# --------------------------------------------------------------------------- result SRs

def read_sr_folder(folder: Path) -> list[Any]:
    """Parse every cxr-triage result SR under ``folder`` (recursively) with the node's own
    SR reader (``ParsedResult``); other files and other SRs are skipped."""
    import pydicom

    # start-up time: highdicom (the node's SR reader) loads only where SRs are read
    from cxr_triage.dicom_node.results.sr_reader import read_result_sr

    parsed = []
    for p in sorted(Path(folder).rglob("*")):
        if not p.is_file():
            continue
        try:
            ds = pydicom.dcmread(p)
        except Exception:  # noqa: BLE001 - not a DICOM file: skip it
            continue
        if getattr(ds, "Modality", "") != "SR":
            continue
        try:
            parsed.append(read_result_sr(ds))
        except ValueError:
            continue  # an SR, but not one of ours
    return parsed


def _scored_from_group(group: Any) -> Scored:
    """One ParsedGroup (study or film measurement group of a result SR) as a Scored."""
    decision = group.decision
    reason = group.reason
    return Scored(
        score=None if decision is Decision.NOT_ASSESSABLE or group.score is None else float(group.score),
        decision=decision,
        reason=getattr(reason, "value", reason),
        threshold=group.threshold,
        operating_point=group.operating_point,
    )


def sr_results_by_uid(parsed_srs: Sequence[Any]) -> tuple[dict[str, Scored], dict[str, Scored]]:
    """(per film SOP Instance UID, per Study Instance UID) results of parsed SRs. A later SR
    for the same study replaces an earlier one (a re-sent study is re-triaged)."""
    by_sop: dict[str, Scored] = {}
    by_study: dict[str, Scored] = {}
    for sr in parsed_srs:
        by_study[str(sr.study_instance_uid)] = _scored_from_group(sr.study)
        for group in sr.films:
            if group.sop_instance_uid:
                by_sop[str(group.sop_instance_uid)] = _scored_from_group(group)
    return by_sop, by_study


def scores_from_srs(films: Sequence[Film], parsed_srs: Sequence[Any], uid_column: str | None = None) -> list[Scored]:
    """Match parsed SRs to manifest films by the manifest's ``sop_instance_uid`` column
    (film-level result) or ``study_instance_uid`` column (the study's result; one film per
    study)."""
    if uid_column is None:
        cols = set(films[0].extra) if films else set()
        uid_column = next((c for c in ("sop_instance_uid", "study_instance_uid") if c in cols), None)
        if uid_column is None:
            raise SourceError("to evaluate SRs the manifest needs a sop_instance_uid or study_instance_uid column")
    by_sop, by_study = sr_results_by_uid(parsed_srs)
    table = by_sop if uid_column == "sop_instance_uid" else by_study
    out, missing = [], []
    for f in films:
        uid = f.extra.get(uid_column, "").strip()
        if uid not in table:
            missing.append(f.file)
            continue
        out.append(table[uid])
    if missing:
        raise SourceError(f"no result SR for {len(missing)} manifest film(s), e.g. {', '.join(missing[:3])}")
    return out
