"""Live results against the radiologists' final reads: is the node doing on this site's stream
what commissioning promised, and which films did it get wrong?

Inputs: an outcomes CSV keyed by ``study_instance_uid`` (the unit the node reports and a
radiologist reads), ``sop_instance_uid`` (per film) or the study's accession number
(``accession_number``, joined to the studies by :mod:`reconcile_keys`), with ``label``
normal/abnormal; and the
node's results, either from its job store (``StudyQueries``) or from the result SRs it
produced (read with the node's own SR reader). Figures use the evaluation harness (Wilson
intervals, DeLong AUROC) on the decisions the node actually delivered. The discordant films
(abnormal called likely normal, normal called suspicious) are exported as a manifest CSV that
``cxr-triage train`` reads.

Radiologists' feedback given on the worklist (accept / reject the AI result, optionally the
finding seen; ``dicom_node/web/feedback.py``) is an outcome source too: ``feedback_outcomes``
turns each study's latest assessment into a study-level read (a rejected "suspicious" is a
normal read, a rejected "likely normal" an abnormal one, a finding decides when given), so
every rejection comes out as a discordant case, with who rejected it, when, and the model
version and threshold it was made at.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from cxr_triage.contract.manifest import label_reader  # the manifest's label spellings
from cxr_triage.dicom_node.monitoring.drift import LiveResult as LiveResult
from cxr_triage.dicom_node.monitoring.drift import live_from_store as live_from_store
from cxr_triage.dicom_node.monitoring.drift import utc_day_bounds as utc_day_bounds
from cxr_triage.evaluation import metrics
from cxr_triage.evaluation.reconcile_keys import ACCESSION_COLUMN
from cxr_triage.evaluation.sources import read_sr_folder

KEYS = ("study_instance_uid", "sop_instance_uid")


@dataclass
class Outcome:
    """The radiologist's final read of a study or film."""

    key: str
    label: int                             # 1 abnormal, 0 normal
    row: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- inputs

def read_outcomes(path: str | Path, accession_column: str = ACCESSION_COLUMN, label_column: str = "label",
                  abnormal_values: Sequence[str] = (), normal_values: Sequence[str] = ()
                  ) -> tuple[str, dict[str, Outcome]]:
    """(key column, outcomes by key). The key is ``sop_instance_uid`` when the CSV has it
    filled, else ``study_instance_uid`` when it has that column, else the accession number
    (column ``accession_column``; the key returned is then ``accession_number``). The label is
    column ``label_column``, read by :func:`~cxr_triage.contract.manifest.label_reader` (the
    shared spellings, or the site's ``abnormal_values`` / ``normal_values``, as ``manifest``).
    ValueError naming the file (and line) and the option for a missing column, an empty or
    repeated key, a bad label."""
    path = Path(path)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        rows = list(reader)
    missing = ([f"no label column {label_column!r} (--label-column to name another)"]
               if label_column not in cols else []) + (
        [f"no study_instance_uid or sop_instance_uid column, nor the accession number's {accession_column!r} "
         "(--accession-column to name another)"] if not cols & {*KEYS, accession_column} else [])
    if missing:
        raise ValueError(f"{path}: outcomes need a label column and study_instance_uid, sop_instance_uid or "
                         f"the accession number: {'; '.join(missing)}; it has {', '.join(sorted(cols))}")
    read = _OutcomeRows(path, label_column, label_reader(abnormal_values, normal_values))
    key = "sop_instance_uid" if "sop_instance_uid" in cols and all(
        (r.get("sop_instance_uid") or "").strip() for r in rows) else "study_instance_uid"
    if key not in cols and accession_column in cols:
        by_accession = read.keyed(rows, accession_column)
        for o in by_accession.values():
            o.row[ACCESSION_COLUMN] = o.key
        return ACCESSION_COLUMN, by_accession
    if key not in cols:
        raise ValueError(f"{path}: every row needs a {key}")
    return key, read.keyed(rows, key)


@dataclass
class _OutcomeRows:
    """Rows of an outcomes CSV -> Outcome by key (the file, its label column and reader)."""

    path: Path
    label_column: str
    label_of: Callable[[str, str], int]

    def keyed(self, rows: list[dict[str, str]], key: str) -> dict[str, Outcome]:
        out: dict[str, Outcome] = {}
        for line, row in enumerate(rows, start=2):
            uid = (row.get(key) or "").strip()
            if not uid:
                raise ValueError(f"{self.path}:{line}: empty {key}")
            if uid in out:
                raise ValueError(f"{self.path}:{line}: {key} {uid} listed twice")
            label = self.label_of(row.get(self.label_column) or "", f"{self.path}:{line}")
            out[uid] = Outcome(uid, label, {k: v or "" for k, v in row.items() if k})
        return out


def live_from_srs(folder: str | Path) -> list[LiveResult]:
    """Study and film results from the result SRs under ``folder`` (the node's outbox, or what
    the PACS received), parsed with the node's SR reader."""
    out: list[LiveResult] = []
    for sr in read_sr_folder(Path(folder)):
        study = sr.study_instance_uid
        out.append(LiveResult(study, _val(sr.decision), sr.score, None, _val(sr.study.reason),
                              operating_point=sr.operating_point, model_version=sr.model_version))
        for g in sr.films:
            out.append(LiveResult(study, _val(g.decision), g.score, g.sop_instance_uid, _val(g.reason),
                                  operating_point=g.operating_point, model_version=sr.model_version))
    return out


def _val(x: Any) -> Any:
    return getattr(x, "value", x)


def feedback_label(verdict: str, decision: str | None, finding: str | None) -> int | None:
    """The read a radiologist's assessment implies: 1 abnormal, 0 normal, None when it says
    nothing (a not-assessable result accepted or rejected without a finding). A finding
    decides when given ("normal" -> 0, any other -> 1); else accepting keeps the AI's call and
    rejecting reverses it."""
    if finding:
        return 0 if finding == "normal" else 1
    ai = {"suspicious": 1, "likely_normal": 0}.get(decision or "")
    if ai is None:
        return None
    return ai if verdict == "accept" else 1 - ai


def feedback_outcomes(feedback: Iterable[dict[str, Any]]) -> dict[str, Outcome]:
    """Study-level outcomes from the worklist feedback (``StudyQueries.feedback()``): each
    study's latest assessment that implies a read. The row keeps who, when, the verdict, the
    finding and the model version and threshold of the assessed result."""
    import time as _time

    out: dict[str, Outcome] = {}
    for f in sorted(feedback, key=lambda f: (f["at"], f["id"])):
        label = feedback_label(f["verdict"], f.get("decision"), f.get("finding"))
        if label is None:
            continue
        uid = f["study_uid"]
        out[uid] = Outcome(uid, label, {
            "findings": f.get("finding") or "",
            "reviewer": f["user"],
            "reviewed_at": _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(float(f["at"]))),
            "verdict": f["verdict"],
            "finding_seen": f.get("finding") or "",
            "model_version": f.get("model_version") or "",
            "threshold": "" if f.get("threshold") is None else repr(float(f["threshold"])),
        })
    return out


def feedback_from_store(store: Any, since: float | None = None, until: float | None = None) -> dict[str, Outcome]:
    """:func:`feedback_outcomes` of the feedback kept in the node's job store (``StudyQueries``)."""
    return feedback_outcomes(store.feedback(since=since, until=until))


# ---------------------------------------------------------------- the reconciliation

@dataclass
class Reconciliation:
    """Live figures against the final reads, and the films to learn from."""

    level: str                              # "study" or "film"
    n_outcomes: int
    n_matched: int
    n_outcomes_without_result: int
    n_results_without_outcome: int
    figures: dict[str, Any]
    discordant: list[dict[str, Any]]
    operating_points: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reconcile(key: str, outcomes: dict[str, Outcome], live: Sequence[LiveResult],
              confidence: float = 0.95) -> Reconciliation:
    """Join outcomes with live results on ``key`` and measure with the harness."""
    level = "film" if key == "sop_instance_uid" else "study"
    by_uid = {}
    for r in live:
        if level == "film" and r.sop_instance_uid:
            by_uid[r.sop_instance_uid] = r
        elif level == "study" and r.sop_instance_uid is None:
            by_uid[r.study_instance_uid] = r
    films_by_study: dict[str, list[LiveResult]] = {}
    for r in live:
        if r.sop_instance_uid:
            films_by_study.setdefault(r.study_instance_uid, []).append(r)
    matched = [(outcomes[u], by_uid[u]) for u in outcomes if u in by_uid]

    tp = fn = tn = fp = na_norm = na_abn = 0
    y_scored, s_scored = [], []
    discordant: list[dict[str, Any]] = []
    for o, r in matched:
        if r.decision == "not_assessable":
            na_abn += o.label
            na_norm += 1 - o.label
            continue
        flagged = r.decision == "suspicious"
        if r.score is not None and math.isfinite(r.score):
            y_scored.append(o.label)
            s_scored.append(float(r.score))
        if o.label == 1 and flagged:
            tp += 1
        elif o.label == 1:
            fn += 1
            discordant.extend(_discordant_rows(o, r, "missed_abnormal", level, films_by_study))
        elif flagged:
            fp += 1
            discordant.extend(_discordant_rows(o, r, "false_suspicious", level, films_by_study))
        else:
            tn += 1
    total = tp + fn + tn + fp + na_norm + na_abn
    figures: dict[str, Any] = {
        "tp": tp, "fn": fn, "tn": tn, "fp": fp,
        "not_assessable": {"normal": na_norm, "abnormal": na_abn},
        "sensitivity": metrics.proportion(tp, tp + fn, confidence).to_dict(),
        "specificity": metrics.proportion(tn, tn + fp, confidence).to_dict(),
        "ppv": metrics.proportion(tp, tp + fp, confidence).to_dict(),
        "npv": metrics.proportion(tn, tn + fn, confidence).to_dict(),
        "workload_all": metrics.proportion(tn + fn, total, confidence).to_dict(),
        "workload_normals": metrics.proportion(tn, tn + fp + na_norm, confidence).to_dict(),
        "not_assessable_share": metrics.proportion(na_norm + na_abn, total, confidence).to_dict(),
        "interval": "wilson",
    }
    if 0 < sum(y_scored) < len(y_scored):
        figures["auroc"] = metrics.auroc_delong(y_scored, s_scored, confidence).to_dict()
    ops = sorted({r.operating_point for _, r in matched if r.operating_point})
    return Reconciliation(
        level=level, n_outcomes=len(outcomes), n_matched=len(matched),
        n_outcomes_without_result=len(outcomes) - len(matched),
        n_results_without_outcome=len(set(by_uid) - set(outcomes)),
        figures=figures, discordant=discordant, operating_points=ops,
    )


def _discordant_rows(o: Outcome, r: LiveResult, kind: str, level: str,
                     films_by_study: dict[str, list[LiveResult]]) -> list[dict[str, Any]]:
    """One manifest row per film behind a discordant result (a study contributes its
    assessable films: the label is the study's read)."""
    films = [r] if level == "film" else [f for f in films_by_study.get(r.study_instance_uid, [])
                                          if f.decision != "not_assessable"] or [r]
    rows = []
    for f in films:
        rows.append({
            "file": o.row.get("file") or f.file,
            "label": "abnormal" if o.label else "normal",
            "patient_id": o.row.get("patient_id", ""),
            "findings": o.row.get("findings", ""),
            "study_instance_uid": f.study_instance_uid,
            "sop_instance_uid": f.sop_instance_uid or "",
            ACCESSION_COLUMN: o.row.get(ACCESSION_COLUMN, ""),
            "decision": f.decision,
            "score": "" if f.score is None else f"{f.score:.6f}",
            "study_decision": r.decision,
            "discordance": kind,
            **{k: o.row.get(k, "") for k in FEEDBACK_COLUMNS},
        })
    return rows


#: Where a radiologist's worklist feedback gave the read: who, when, what, and what it assessed.
FEEDBACK_COLUMNS = ("reviewer", "reviewed_at", "verdict", "finding_seen", "model_version", "threshold")
MANIFEST_COLUMNS = ("file", "label", "patient_id", "findings", "study_instance_uid", "sop_instance_uid",
                    ACCESSION_COLUMN, "decision", "score", "study_decision", "discordance", *FEEDBACK_COLUMNS)


def write_discordant_manifest(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Manifest CSV (``file,label,...``) of the discordant films, ready for retraining; files
    are the node's spool copies (or the outcome CSV's ``file``), blank when unknown."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(MANIFEST_COLUMNS))
        w.writeheader()
        for row in rows:
            w.writerow({k: row.get(k, "") for k in MANIFEST_COLUMNS})
    return path


def summary_lines(rec: Reconciliation) -> list[str]:
    """Human summary for the terminal."""
    f = rec.figures

    def pct(p: dict[str, Any]) -> str:
        if p["value"] is None:
            return "n/a"
        return f"{p['value']:.1%} (95% CI {p['low']:.1%}-{p['high']:.1%}, {p['k']}/{p['n']})"

    lines = [
        f"reconciled {rec.n_matched} of {rec.n_outcomes} {rec.level} outcomes "
        f"({rec.n_outcomes_without_result} without a result, {rec.n_results_without_outcome} results without an outcome)",
        f"sensitivity       {pct(f['sensitivity'])}",
        f"specificity       {pct(f['specificity'])}",
        f"workload saved    {pct(f['workload_all'])} of all, {pct(f['workload_normals'])} of normals",
        f"not assessable    {pct(f['not_assessable_share'])}",
        f"discordant films  {len(rec.discordant)} "
        f"({sum(d['discordance'] == 'missed_abnormal' for d in rec.discordant)} from missed abnormal results)",
    ]
    if "auroc" in f:
        a = f["auroc"]
        lines.insert(3, f"AUROC             {a['value']:.3f} (95% CI {a['low']:.3f}-{a['high']:.3f})")
    return lines
